"""Starting an installed systemd unit the way systemd would, where PID 1 is not systemd.

Reads the unit file itself (ExecStartPre, ExecStart, User, Group, WorkingDirectory,
Environment, EnvironmentFile, UMask, NoNewPrivileges, Type) and runs exactly that: the
pre-start commands to completion, then the main process in a session of its own (the
stand-in for the unit's cgroup), with systemd's basic environment, the notify socket for
Type=notify, and stop as KillMode=mixed does (TERM to the main process, then KILL to
the rest). The sandboxing directives that need mount namespaces (ProtectSystem,
PrivateTmp, ...) are not reproduced; `systemd-analyze verify` and `security` check them.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

UNIT_DIR = Path("/lib/systemd/system")
# systemd's default PATH for services (systemd.exec(5), "Environment variables").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; comments and continuation lines as systemd."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = (pending + raw).strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"{path}: cannot parse {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile=: KEY=VALUE lines, # and ; comments, the last value of a
    key wins, surrounding quotes dropped."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def command(line: str) -> tuple[list[str], bool]:
    """An Exec*= line as argv, and whether its failure is ignored (the "-" prefix)."""
    prefixes = ""
    while line and line[0] in "-@:+!":
        prefixes += line[0]
        line = line[1:]
    if set(prefixes) - {"-"}:
        raise ValueError(f"prefixes {prefixes!r} are not reproduced here: {line}")
    argv = shlex.split(line)
    if any("$" in arg or "%" in arg for arg in argv):
        raise ValueError(f"variables and specifiers are not expanded here: {line}")
    return argv, "-" in prefixes


@dataclass
class Service:
    """One unit started by hand: its main process and its log."""

    name: str
    log: Path
    extra_args: list[str] = field(default_factory=list)
    unit: dict[str, list[str]] = field(init=False)
    process: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.unit = parse_unit(UNIT_DIR / f"{self.name}.service")["Service"]

    def one(self, key: str, default: str | None = None) -> str:
        values = self.unit.get(key)
        if not values:
            if default is None:
                raise KeyError(f"{self.name}.service has no {key}=")
            return default
        return values[-1]

    @property
    def user(self) -> str:
        return self.one("User")

    def environment(self) -> dict[str, str]:
        account = pwd.getpwnam(self.user)
        env = {
            "PATH": SYSTEMD_PATH,
            "HOME": account.pw_dir,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": account.pw_shell,
        }
        for name in self.unit.get("StateDirectory", []):
            env["STATE_DIRECTORY"] = f"/var/lib/{name}"
        for name in self.unit.get("RuntimeDirectory", []):
            env["RUNTIME_DIRECTORY"] = f"/run/{name}"
        for line in self.unit.get("Environment", []):
            for assignment in shlex.split(line):
                key, _, value = assignment.partition("=")
                env[key] = value
        for line in self.unit.get("EnvironmentFile", []):
            optional = line.startswith("-")
            path = Path(line.lstrip("-"))
            if optional and not path.exists():
                continue
            env.update(parse_environment_file(path))
        return env

    def _preexec(self) -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # If the test dies, so does the service (a leftover would hold the port).
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if self.one("NoNewPrivileges", "no") in ("yes", "true", "1", "on"):
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.umask(int(self.one("UMask", "0022"), 8))

    def _popen(self, argv: list[str], env: dict[str, str], out, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            user=self.user,
            group=self.one("Group", self.user),
            extra_groups=[],
            cwd=self.one("WorkingDirectory", "/"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=self._preexec,
            **kwargs,
        )

    def _runtime_directories(self) -> None:
        account = pwd.getpwnam(self.user)
        for name in self.unit.get("RuntimeDirectory", []):
            path = Path("/run") / name
            path.mkdir(mode=int(self.one("RuntimeDirectoryMode", "0755"), 8), exist_ok=True)
            os.chown(path, account.pw_uid, account.pw_gid)

    def start(self, timeout: float = 180) -> int:
        """ExecStartPre lines to completion, then ExecStart; for Type=notify, wait for
        READY=1 on a notify socket. Returns the main pid."""
        env = self.environment()
        self._runtime_directories()
        with open(self.log, "ab") as out:
            for line in self.unit.get("ExecStartPre", []):
                argv, ignore_failure = command(line)
                pre = self._popen(argv, env, out)
                if pre.wait(timeout=timeout) != 0 and not ignore_failure:
                    raise AssertionError(
                        f"{self.name}: ExecStartPre {argv} exited {pre.returncode}; see {self.log}"
                    )
            argv, _ = command(self.one("ExecStart"))
            argv += self.extra_args
            if self.one("Type", "simple") == "notify":
                return self._start_notify(argv, env, out, timeout)
            self.process = self._popen(argv, env, out, start_new_session=True)
            return self.process.pid

    def _start_notify(self, argv: list[str], env: dict[str, str], out, timeout: float) -> int:
        folder = Path(tempfile.mkdtemp(prefix="notify-"))
        os.chmod(folder, 0o755)
        path = folder / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            # As systemd's own notify socket: any process of the unit may write to it.
            os.chmod(path, 0o777)
            sock.settimeout(1)
            self.process = self._popen(
                argv, {**env, "NOTIFY_SOCKET": str(path)}, out, start_new_session=True
            )
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    if self.process.poll() is not None:
                        raise AssertionError(
                            f"{self.name} exited {self.process.returncode}; see {self.log}"
                        )
                    try:
                        message = sock.recv(4096).decode()
                    except TimeoutError:
                        continue
                    if "READY=1" in message.split("\n"):
                        return self.process.pid
                raise AssertionError(f"{self.name} sent no READY=1 in {timeout}s; see {self.log}")
            finally:
                path.unlink(missing_ok=True)
                folder.rmdir()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60) -> None:
        """KillMode=mixed: TERM to the main process, KILL to what is left of its session."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)
