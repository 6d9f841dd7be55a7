"""Process plumbing for the lab: commands, pid files, ports, mount namespaces."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .state import LabError


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run a local command; on failure raise LabError with its last stderr lines."""
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise LabError(f"{argv[0]}: command not found (is its Debian package installed?)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv[:3])}…: still running after {timeout:.0f}s") from None
    if check and done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise LabError(f"{' '.join(argv[:6])} failed (exit {done.returncode}):\n{tail}")
    return done


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text or not text[0].isdigit():
        return None
    return int(text[0])


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running anything.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def running_from(pidfile: Path) -> int | None:
    pid = read_pid(pidfile)
    return pid if alive(pid) else None


def stop_pid(pid: int, name: str, timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: the lab never leaves a process it started behind."""
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        if not alive(pid):
            return
        time.sleep(0.05)
    raise LabError(f"{name} (pid {pid}) did not stop")


def port_free(address: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_port(address: str, port: int, what: str, hint: str = "") -> None:
    if not port_free(address, port):
        extra = f" ({hint})" if hint else ""
        raise LabError(
            f"cannot start {what}: {address}:{port} is already in use by a process the lab "
            f"did not start{extra}"
        )


def wait_port(address: str, port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise LabError(f"{what} did not start listening on {address}:{port} within {timeout:.0f}s")


def spawn(
    argv: Sequence[str],
    pidfile: Path,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> int:
    """Start a long-running process in its own session, detached, and record its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
            preexec_fn=preexec_fn,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pids_in_namespace(ns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mount_ns(int(entry)) == ns:
            found.append(int(entry))
    return found


def with_descendants(pids: list[int]) -> list[int]:
    """`pids` and every process below them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return sorted(found)


def in_namespace(holder_pid: int, argv: Sequence[str], user: str | None = None) -> list[str]:
    """An argv that runs `argv` inside the mount namespace held by `holder_pid`."""
    prefix = ["nsenter", f"--mount=/proc/{holder_pid}/ns/mnt", "--"]
    if user:
        prefix += ["runuser", "-u", user, "--"]
    return prefix + list(argv)
