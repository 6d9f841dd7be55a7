"""The SSH runner: the only module in ElepHaaS that imports paramiko.

Every command on a managed server goes through `run`, as an argument list that
`commands.quote_argv` turns into one quoted command line. Secrets reach commands on stdin
(`input=`), never on the command line.

Trust: a server's host key is pinned when a DBA adds it (`fetch_host_key` shows the key
and its fingerprint to confirm). The key a server presents is compared with the pin right
after the key exchange and before anything else is sent, so an impostor never sees the
controller's key signature, a user name or a command. A server with no pin is refused:
nothing is ever accepted on first use.

Connections: a per-process pool keeps one authenticated transport per server (more when
one carries as many channels as sshd allows) and runs each command on its own channel,
so many threads of a Celery worker can work on one server at once for the price of one
TCP connection and one key exchange.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import paramiko
from django.conf import settings
from django.core.exceptions import ValidationError

from instances.commands import Command, owned, quote_argv
from instances.validators import sha256_fingerprint

logger = logging.getLogger(__name__)

# OpenSSH's default MaxSessions: the most channels one connection may carry at once.
# A transport that refuses a channel below this gets its own, lower limit.
MAX_CHANNELS_PER_TRANSPORT = 10
# How long a stopped command gets to exit on SIGTERM before it is sent SIGKILL.
STOP_GRACE = 2.0
# The wrapper (commands.owned) sends SIGKILL this long after SIGTERM.
OWNED_KILL_AFTER = 5.0
# How long to wait for the end of output once the command has exited. A daemon started
# without redirecting its output (`pg_ctl start` without -l) keeps the channel's stdout
# open; ssh(1) would hang until the daemon stops, we return what the command printed.
EOF_GRACE = 2.0
# Longest wait between two looks at the cancel event and the deadline.
POLL_INTERVAL = 0.1
READ_CHUNK = 65536
STDERR_TAIL_LINES = 5
STDERR_TAIL_CHARS = 500
COMMAND_SHOWN_CHARS = 200


class Stage(StrEnum):
    """Where a remote command failed. A StrEnum, so `error.stage == "hostkey"` also works."""

    CONNECT = "connect"
    AUTH = "auth"
    HOSTKEY = "hostkey"
    TIMEOUT = "timeout"
    EXIT = "exit"
    CANCELLED = "cancelled"
    CONFIG = "config"


class SSHError(Exception):
    """A command could not be run, or ran and failed; `str()` is one line for the job log.

    `command_started` says whether the command may have run on the server: only when it
    is false is it safe to try again without first checking the state of the server.
    """

    def __init__(
        self,
        server: str,
        stage: Stage | str,
        detail: str,
        *,
        exit_status: int | None = None,
        stderr_tail: str = "",
        command: str = "",
        command_started: bool = False,
    ) -> None:
        self.server = server
        self.stage = Stage(stage)
        self.detail = " ".join(detail.split("\n"))
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail
        self.command = command
        self.command_started = command_started
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.server}: {self.detail}" if self.server else self.detail

    def __reduce__(self):
        # Rebuilt with its attributes when pickled or copied (the default would call
        # __init__ with the message alone).
        return (self.__class__, (self.server, str(self.stage), self.detail), self.__dict__)

    @property
    def transient(self) -> bool:
        """True when trying again later may work and cannot run the command twice."""
        return self.stage == Stage.CONNECT and not self.command_started


@dataclass
class Result:
    """A command that ran to its end. `exit_status` is -1 when it was killed by a signal."""

    exit_status: int
    stdout: str
    stderr: str
    duration: float
    command: str


class SSHServer(Protocol):
    """What the runner needs of a server (the Server model, the lab's LabServer...)."""

    hostname: str
    ssh_port: int
    ssh_user: str
    host_key_type: str
    host_key: str


@dataclass(frozen=True)
class _Target:
    """A server reduced to what identifies a connection to it; the pool's key."""

    hostname: str
    port: int
    user: str
    key_type: str
    key_b64: str

    @property
    def account(self) -> tuple[str, int, str]:
        return (self.hostname, self.port, self.user)


# --- Small helpers -----------------------------------------------------------------------


def host_key_fingerprint(key_b64: str) -> str:
    """The SHA256 fingerprint of a base64 public key, as `ssh-keygen -l` prints it."""
    try:
        return sha256_fingerprint(key_b64.strip())
    except ValidationError:
        return "(invalid key)"


def _key_blob_type(key_b64: str) -> str | None:
    """The key type named inside an SSH public key blob (its first field), if readable."""
    try:
        blob = base64.b64decode(key_b64, validate=True)
        length = int.from_bytes(blob[:4], "big")
        return blob[4 : 4 + length].decode("ascii") if 0 < length < 64 else None
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def _host_key_algorithms(key_type: str) -> tuple[str, ...]:
    # An RSA key is the same key whichever signature hash the server signs with.
    if key_type == "ssh-rsa":
        return ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    return (key_type,)


def _target(server: SSHServer) -> _Target:
    hostname = str(getattr(server, "hostname", "") or "")
    if not hostname:
        raise SSHError("", Stage.CONFIG, "the server has no hostname")
    port = int(getattr(server, "ssh_port", None) or settings.SSH_DEFAULT_PORT)
    user = str(getattr(server, "ssh_user", "") or settings.SSH_DEFAULT_USER)
    key_b64 = "".join(str(getattr(server, "host_key", "") or "").split())
    if not key_b64:
        raise SSHError(
            hostname,
            Stage.HOSTKEY,
            "no host key is pinned for this server; a DBA must pin it from the server page "
            "before ElepHaaS connects to it",
        )
    blob_type = _key_blob_type(key_b64)
    if blob_type is None:
        raise SSHError(hostname, Stage.CONFIG, "the pinned host key is not a valid SSH public key")
    key_type = str(getattr(server, "host_key_type", "") or blob_type)
    if key_type != blob_type:
        raise SSHError(
            hostname,
            Stage.CONFIG,
            f"the pinned host key type {key_type} does not match the pinned key ({blob_type})",
        )
    if not all(a in paramiko.Transport._key_info for a in _host_key_algorithms(key_type)):
        raise SSHError(hostname, Stage.CONFIG, f"unsupported host key type {key_type}")
    return _Target(hostname, port, user, key_type, key_b64)


def _shorten(text: str, limit: int = COMMAND_SHOWN_CHARS) -> str:
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    tail = "\n".join(lines[-STDERR_TAIL_LINES:])
    return tail[-STDERR_TAIL_CHARS:]


# --- The controller's key ------------------------------------------------------------------

_key_lock = threading.Lock()
_key_cache: tuple[tuple[str, int, int], paramiko.PKey] | None = None


def _private_key() -> paramiko.PKey:
    """The controller's private key, read again only when the file changes."""
    global _key_cache
    path = str(settings.SSH_PRIVATE_KEY)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise SSHError(
            "", Stage.CONFIG, f"the SSH private key {path} does not exist (ELEPHAAS_SSH_KEY)"
        ) from None
    except OSError as exc:
        raise SSHError(
            "", Stage.CONFIG, f"cannot read the SSH key {path}: {exc.strerror}"
        ) from None
    stamp = (path, stat.st_mtime_ns, stat.st_size)
    with _key_lock:
        if _key_cache is not None and _key_cache[0] == stamp:
            return _key_cache[1]
        try:
            key = paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            raise SSHError(
                "",
                Stage.CONFIG,
                f"the SSH private key {path} is protected by a passphrase; ElepHaaS needs a key "
                "without one, readable only by its service user",
            ) from None
        except OSError as exc:
            raise SSHError(
                "", Stage.CONFIG, f"cannot read the SSH key {path}: {exc.strerror}"
            ) from None
        except (paramiko.SSHException, ValueError, TypeError):
            # The exception text is not shown: parsers may quote what they could not parse.
            raise SSHError(
                "",
                Stage.CONFIG,
                f"{path} is not a private key ElepHaaS can use (ed25519, ECDSA or RSA, in "
                "OpenSSH or PEM format)",
            ) from None
        _key_cache = (stamp, key)
        return key


def controller_public_key() -> str:
    """The controller's public key as one `authorized_keys` line, to show to DBAs.

    The `.pub` file next to the private key is used when it matches the private key (it
    carries the key's comment); a missing or stale one is replaced by the key itself.
    """
    pub_path = Path(str(settings.SSH_PRIVATE_KEY) + ".pub")
    try:
        pub_line = pub_path.read_text().strip().splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        pub_line = ""
    try:
        key = _private_key()
    except SSHError:
        # The web server may be unable to read the private key while the worker can.
        if pub_line:
            return pub_line
        raise
    derived = f"{key.get_name()} {key.get_base64()}"
    fields = pub_line.split()
    if len(fields) >= 2 and fields[1] == key.get_base64():
        return pub_line
    return f"{derived} elephaas"


# --- Connecting ----------------------------------------------------------------------------


def _open_socket(hostname: str, port: int, timeout: float) -> socket.socket:
    where = f"{hostname}:{port}"
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except ConnectionRefusedError:
        raise SSHError(
            hostname,
            Stage.CONNECT,
            f"connection to {where} refused (is sshd running, and is the port right?)",
        ) from None
    except TimeoutError:
        raise SSHError(
            hostname, Stage.CONNECT, f"no answer from {where} within {timeout:g} s"
        ) from None
    except socket.gaierror as exc:
        raise SSHError(hostname, Stage.CONNECT, f"cannot resolve {hostname}: {exc}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SSHError(hostname, Stage.CONNECT, f"cannot connect to {where}: {reason}") from None
    # Notice a silently vanished server (a pulled cable, a dropped NAT entry) between
    # commands, not minutes into the next one.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # SSH is a conversation of small packets (open a channel, wait for the answer, send
    # the command...); with Nagle's algorithm each of them can wait for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _start_transport(
    hostname: str, port: int, timeout: float, key_algorithms: Sequence[str] | None = None
) -> paramiko.Transport:
    """Connect and do the key exchange, nothing more; the caller checks the host key."""
    sock = _open_socket(hostname, port, timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    if key_algorithms:
        # Ask only for the pinned key's type: a server with several host keys would
        # otherwise present the one paramiko likes best, and it would not match the pin.
        transport.get_security_options().key_types = tuple(key_algorithms)
    try:
        transport.start_client(timeout=timeout)
    except paramiko.IncompatiblePeer as exc:
        transport.close()
        if key_algorithms and "host key" in str(exc):
            raise SSHError(
                hostname,
                Stage.HOSTKEY,
                f"{hostname}:{port} no longer offers a {key_algorithms[-1]} host key, the type "
                "of its pinned key; the server's host keys changed: a DBA must check the server "
                "and re-pin its key from the server page",
            ) from None
        raise SSHError(
            hostname, Stage.CONNECT, f"SSH negotiation with {hostname}:{port} failed: {exc}"
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        if "banner" in str(exc):
            detail = (
                f"{hostname}:{port} did not answer as an SSH server within {timeout:g} s "
                "(wrong port?)"
            )
        else:
            detail = f"SSH handshake with {hostname}:{port} failed: {exc or type(exc).__name__}"
        raise SSHError(hostname, Stage.CONNECT, detail) from None
    return transport


def _connect(target: _Target) -> paramiko.Transport:
    """A new transport to `target`: connected, host key checked against the pin, logged in.

    1. TCP connection, SSH key exchange asking for the pinned key type only.
    2. Compare the server's host key with the pin; on any difference close and refuse,
       before the user name or any signature is sent.
    3. Public-key authentication with the controller's key.
    """
    key = _private_key()
    timeout = float(settings.SSH_CONNECT_TIMEOUT)
    transport = _start_transport(
        target.hostname, target.port, timeout, _host_key_algorithms(target.key_type)
    )
    try:
        remote = transport.get_remote_server_key()
        if remote.get_name() != target.key_type or remote.get_base64() != target.key_b64:
            raise SSHError(
                target.hostname,
                Stage.HOSTKEY,
                f"host key changed: pinned {target.key_type} "
                f"{host_key_fingerprint(target.key_b64)}, the server now presents "
                f"{remote.get_name()} {host_key_fingerprint(remote.get_base64())}; refusing to "
                "connect. A DBA must check the server and re-pin its key from the server page",
            )
        try:
            transport.auth_publickey(target.user, key)
        except paramiko.BadAuthenticationType as exc:
            allowed = ", ".join(exc.allowed_types) or "none"
            raise SSHError(
                target.hostname,
                Stage.AUTH,
                f"{target.user}@{target.hostname} does not accept public-key logins "
                f"(it allows: {allowed})",
            ) from None
        except paramiko.AuthenticationException:
            raise SSHError(
                target.hostname,
                Stage.AUTH,
                f"{target.user}@{target.hostname} refused the controller's SSH key "
                f"({key.get_name()} {key.fingerprint}): install the controller's public key "
                f"(shown on the add-server page) in ~{target.user}/.ssh/authorized_keys",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHError(
                target.hostname,
                Stage.CONNECT,
                f"connection lost while logging in as {target.user}: {exc or type(exc).__name__}",
            ) from None
    except BaseException:
        transport.close()
        raise
    if settings.SSH_KEEPALIVE:
        transport.set_keepalive(int(settings.SSH_KEEPALIVE))
    return transport


def fetch_host_key(hostname: str, port: int, timeout: float | None = None) -> tuple[str, str, str]:
    """The host key `hostname:port` presents: (type, base64 key, "SHA256:..." fingerprint).

    Only the key exchange is done; nothing is authenticated. For a DBA to confirm against
    `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server before pinning it.
    """
    transport = _start_transport(
        hostname, int(port), float(timeout or settings.SSH_CONNECT_TIMEOUT)
    )
    try:
        key = transport.get_remote_server_key()
        return key.get_name(), key.get_base64(), host_key_fingerprint(key.get_base64())
    finally:
        transport.close()


# --- The pool ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    transport: paramiko.Transport
    target: _Target
    channels: int = 0
    limit: int = MAX_CHANNELS_PER_TRANSPORT
    retired: bool = False
    pooled: bool = True


@dataclass(frozen=True)
class PoolStats:
    connections_opened: int
    transports: int


class _Pool:
    """Open transports by server, shared by the threads of one process.

    Channels are counted per transport so that a command never waits for another to end:
    past the transport's limit, another transport to the same server is opened.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[_Target, list[_Conn]] = {}
        # One connection attempt per server at a time, so that eight threads finding the
        # pool empty make one connection, not eight; other servers are not held up.
        self._connecting: dict[_Target, threading.Lock] = {}
        self._pid = os.getpid()
        self.connections_opened = 0

    def after_fork_in_child(self) -> None:
        # The child shares the parent's sockets: a byte it sent would corrupt the parent's
        # encrypted stream. Forget the parent's transports without a goodbye (their threads
        # do not exist here), and renew the locks, which another thread may have held at
        # the moment of the fork.
        for conns in self._conns.values():
            for conn in conns:
                try:
                    conn.transport.sock.close()
                except OSError:
                    pass
        self._reset()

    def acquire(self, target: _Target) -> _Conn:
        """A live transport to `target` with a channel reserved on it for the caller."""
        with self._lock:
            if self._pid != os.getpid():
                self.after_fork_in_child()
            connecting = self._connecting.setdefault(target, threading.Lock())
        with connecting:
            with self._lock:
                conn = self._free_conn(target)
                if conn is not None:
                    conn.channels += 1
                    return conn
                stale = self._retire_other_pins(target)
            for old in stale:
                old.transport.close()
            transport = _connect(target)
            conn = _Conn(transport, target, channels=1)
            with self._lock:
                self.connections_opened += 1
                self._conns.setdefault(target, []).append(conn)
        return conn

    def _free_conn(self, target: _Target) -> _Conn | None:
        # Holding self._lock.
        conns = self._conns.get(target, [])
        alive = []
        for conn in conns:
            if conn.transport.is_active():
                alive.append(conn)
            else:
                conn.retired = True
        self._conns[target] = alive
        for conn in alive:
            if conn.channels < conn.limit:
                return conn
        return None

    def _retire_other_pins(self, target: _Target) -> list[_Conn]:
        # Holding self._lock. A transport authenticated under another pinned key for the
        # same account must never be used again, even if the pin changes back: the pin
        # changed because the server's key did. Idle ones are closed now, busy ones when
        # their last command ends.
        idle = []
        for other in [t for t in self._conns if t.account == target.account and t != target]:
            for conn in self._conns.pop(other):
                conn.retired = True
                if conn.channels == 0:
                    idle.append(conn)
        return idle

    def release(self, conn: _Conn) -> None:
        with self._lock:
            conn.channels -= 1
            close = conn.retired and conn.channels == 0
        if close:
            conn.transport.close()

    def discard(self, conn: _Conn) -> None:
        """Drop a transport found dead; it is closed once no command uses it."""
        with self._lock:
            conns = self._conns.get(conn.target, [])
            if conn in conns:
                conns.remove(conn)
            conn.retired = True
        self.release(conn)

    def refuse_more_channels(self, conn: _Conn) -> None:
        # sshd refused a channel: its MaxSessions is below ours. Never ask it for more
        # than it carries now; the command will use another transport.
        with self._lock:
            conn.limit = max(1, conn.channels - 1)
        self.release(conn)

    def transports_for(self, server: SSHServer) -> list[paramiko.Transport]:
        with self._lock:
            return [c.transport for c in self._conns.get(_target(server), [])]

    def stats(self) -> PoolStats:
        with self._lock:
            count = sum(len(conns) for conns in self._conns.values())
            return PoolStats(self.connections_opened, count)

    def close_all(self) -> None:
        with self._lock:
            conns = [conn for conns in self._conns.values() for conn in conns]
            for conn in conns:
                conn.retired = True
            self._conns.clear()
        for conn in conns:
            conn.transport.close()


_pool = _Pool()


def _after_fork_in_child() -> None:
    global _key_lock
    _key_lock = threading.Lock()  # another thread may have held it at the fork
    _pool.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_pool.close_all)


def close_all() -> None:
    """Close every pooled connection (at worker shutdown, in tests)."""
    _pool.close_all()


def pool_stats() -> PoolStats:
    """How many connections the pool has opened, and how many it holds now."""
    return _pool.stats()


# --- Running commands ----------------------------------------------------------------------


def _open_channel(target: _Target, fresh: bool) -> tuple[_Conn, paramiko.Channel]:
    """A session channel on a pooled (or, with `fresh`, a brand-new) transport.

    Nothing has run yet when this returns, so a transport found dead here is replaced
    once: that repeats a connection, never a command.
    """
    timeout = float(settings.SSH_CONNECT_TIMEOUT)
    if fresh:
        conn = _Conn(_connect(target), target, channels=1, retired=True, pooled=False)
        try:
            return conn, conn.transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            conn.transport.close()
            raise SSHError(
                target.hostname, Stage.CONNECT, f"cannot open an SSH channel: {exc}"
            ) from None
    reconnected = False
    for _attempt in range(MAX_CHANNELS_PER_TRANSPORT + 1):
        conn = _pool.acquire(target)
        try:
            return conn, conn.transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if _channel_refused(conn.transport, exc):
                _pool.refuse_more_channels(conn)
                continue
            _pool.discard(conn)
            if reconnected:
                raise SSHError(
                    target.hostname, Stage.CONNECT, f"cannot open an SSH channel: {exc!r}"
                ) from None
            logger.info(
                "ssh %s: pooled connection is gone (%r), reconnecting", target.hostname, exc
            )
            reconnected = True
    raise SSHError(target.hostname, Stage.CONNECT, "the server refuses every new SSH channel")


def _channel_refused(transport: paramiko.Transport, exc: BaseException) -> bool:
    """Whether sshd said no to a channel (MaxSessions) on a connection that still works."""
    if isinstance(exc, paramiko.ChannelException):
        return True
    # paramiko keeps one saved exception per transport: when several threads are refused
    # at once, all but one get this generic error instead of their ChannelException.
    return transport.is_active() and str(exc) == "Unable to open channel."


def _finish(conn: _Conn, chan: paramiko.Channel) -> None:
    chan.close()
    if conn.pooled:
        _pool.release(conn)
    else:
        conn.transport.close()


def _send_signal(chan: paramiko.Channel, name: str) -> None:
    # RFC 4254 6.9 "signal" request; OpenSSH's sshd (7.9 and later) sends it to the
    # command's whole process group. paramiko has no public call for it.
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    chan.transport._send_user_message(message)


def _stop(chan: paramiko.Channel) -> None:
    """Stop a running command: EOF on the wrapper's stdin (commands.owned), which sends
    SIGTERM to the command's own process group, SIGKILL 5 s later; then the channel is
    closed. A signal request would reach only the wrapper, not the command's session."""
    try:
        chan.shutdown_write()
        if not chan.status_event.wait(STOP_GRACE + OWNED_KILL_AFTER):
            _send_signal(chan, "KILL")
    except (paramiko.SSHException, EOFError, OSError):
        pass  # the connection is gone: the wrapper sees EOF and ends the command


def _pump(
    target: _Target,
    chan: paramiko.Channel,
    line: str,
    stdin: bytes | None,
    deadline: float,
    timeout: float,
    cancel: threading.Event | None,
) -> tuple[int, bytes, bytes]:
    """Feed stdin and read stdout and stderr together until the command ends.

    Reading both streams as data arrives is what keeps a command with megabytes of output
    on one stream from blocking forever on a full window of the other.
    """
    out, err = bytearray(), bytearray()
    # stdin stays open until the command ends: its EOF is what tells the wrapper
    # (commands.owned) that nobody waits any more, and ends the command.
    pending = memoryview(stdin) if stdin else None
    # paramiko makes the channel's fileno() readable while either stream has data, and
    # for good at the end. poll(), not select(): a busy worker has descriptors past 1024.
    wakeup = select.poll()
    wakeup.register(chan.fileno(), select.POLLIN)
    exited_at: float | None = None
    shown = _shorten(line)
    while True:
        while chan.recv_ready():
            out += chan.recv(READ_CHUNK)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(READ_CHUNK)
        if pending is not None:
            try:
                while pending and chan.send_ready():
                    pending = pending[chan.send(pending[:READ_CHUNK]) :]
            except OSError:
                pending = memoryview(b"")  # the command is gone and did not read it all
            if not pending:
                pending = None
        if chan.closed or (chan.eof_received and chan.exit_status_ready()):
            break
        now = time.monotonic()
        if chan.exit_status >= 0:
            exited_at = exited_at or now
            if now - exited_at >= EOF_GRACE:
                logger.warning(
                    "ssh %s: `%s` exited but left its output open", target.hostname, shown
                )
                break
        if cancel is not None and cancel.is_set():
            _stop(chan)
            raise SSHError(
                target.hostname,
                Stage.CANCELLED,
                f"`{shown}` was cancelled and stopped",
                command=line,
                command_started=True,
            )
        if now >= deadline:
            _stop(chan)
            raise SSHError(
                target.hostname,
                Stage.TIMEOUT,
                f"`{shown}` did not finish within {timeout:g} s and was stopped",
                command=line,
                command_started=True,
            )
        wait = min(POLL_INTERVAL, deadline - now)
        if pending is not None:
            wait = min(wait, 0.005)  # stdin has no wakeup: look again soon
        if chan.eof_received:
            # The wakeup pipe stays readable after EOF; wait for the exit status instead.
            chan.status_event.wait(wait)
        else:
            wakeup.poll(wait * 1000)
    while chan.recv_ready():
        out += chan.recv(READ_CHUNK)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(READ_CHUNK)
    # sshd always sends EOF before it closes a channel; a channel closed without EOF and
    # without an exit status was closed by paramiko because the connection died (it
    # closes the channels before it marks the transport inactive, so check both). Note
    # that exit_status_ready() is true for any closed channel; the status stays -1.
    if chan.exit_status < 0 and (not chan.eof_received or not chan.transport.is_active()):
        raise SSHError(
            target.hostname,
            Stage.CONNECT,
            f"the connection was lost while `{shown}` was running; it may or may not have "
            "completed",
            command=line,
            command_started=True,
        )
    return chan.exit_status, bytes(out), bytes(err)


def run(
    server: SSHServer,
    argv: Sequence[str] | Command,
    *,
    timeout: float | None = None,
    check: bool = True,
    input: str | bytes | None = None,  # the name subprocess.run uses
    cancel: threading.Event | None = None,
    fresh: bool = False,
    owner: str = "adhoc",
) -> Result:
    """Run a command on `server` and return its exit status and output.

    `argv` is quoted into one command line (`commands.quote_argv`). `input` goes to the
    command's stdin (the way for secrets). Raises SSHError: for connection, host key and
    login failures; when `timeout` (default SSH_COMMAND_TIMEOUT) passes or `cancel` is
    set, after stopping the command; with `check`, when it exits non-zero (the message
    quotes the end of stderr, so a command given a secret must not echo it). `fresh` uses
    a new connection, closed afterwards, instead of the pool.

    The command runs under commands.owned: it ends when its channel closes (the worker
    died, the connection dropped, a cancel), and `owner` (`job-12`) names it on the
    server, so that commands.end_owned finds what a lost job left behind.
    """
    started = time.monotonic()
    line = argv.line() if isinstance(argv, Command) else quote_argv(argv)
    target = _target(server)
    limit = float(settings.SSH_COMMAND_TIMEOUT if timeout is None else timeout)
    if limit <= 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    stdin = input.encode("utf-8") if isinstance(input, str) else input
    shown = _shorten(line)
    words = argv.words() if isinstance(argv, Command) else list(argv)
    wrapped = quote_argv(owned(owner, words, None if stdin is None else len(stdin)))
    if cancel is not None and cancel.is_set():
        raise SSHError(target.hostname, Stage.CANCELLED, f"`{shown}` was cancelled before it ran")
    conn, chan = _open_channel(target, fresh)
    try:
        try:
            chan.exec_command(wrapped)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHError(
                target.hostname,
                Stage.CONNECT,
                f"the server did not start `{shown}`: {exc}",
                command=line,
                command_started=True,
            ) from None
        status, out, err = _pump(target, chan, line, stdin, started + limit, limit, cancel)
    finally:
        _finish(conn, chan)
    result = Result(
        exit_status=status,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        duration=time.monotonic() - started,
        command=line,
    )
    logger.debug(
        "ssh %s@%s: %s -> %s in %.3f s",
        target.user,
        target.hostname,
        shown,
        status,
        result.duration,
    )
    if check and status != 0:
        tail = _tail(result.stderr)
        if status == -1:
            what = "ended without an exit status (killed by a signal?)"
        else:
            what = f"exited with status {status}"
        detail = f"`{shown}` {what}: " + (" | ".join(tail.splitlines()) or "(no error output)")
        raise SSHError(
            target.hostname,
            Stage.EXIT,
            detail,
            exit_status=None if status == -1 else status,
            stderr_tail=tail,
            command=line,
            command_started=True,
        )
    return result


def check_login(server: SSHServer) -> None:
    """Log in to `server` on a new connection and run `true`; raise SSHError if that fails.

    Not pooled, so that it proves what it says now (after a DBA installed the key), not
    what an old connection proved.
    """
    run(server, ["true"], fresh=True, timeout=float(settings.SSH_CONNECT_TIMEOUT))
