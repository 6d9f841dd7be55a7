"""A second controller: a Celery worker on a "host" of its own, sharing the lab's
metadata database, broker and servers, as a second ElepHaaS host would (DESIGN,
"Deployment": scale beyond one controller is more workers on more hosts).

Its host is a set of namespaces: network (its own stack, reached by a veth pair), mount
(its own /tmp), UTS (its own hostname, so its jobs' `worker` says which host ran them)
and PID (its own pid 1; its pids mean nothing on the lab's host, as on another machine).

The lab's services and servers listen on loopback addresses (127.0.0.1, 127.0.1.N), which
are not routable between network namespaces. The controller's namespace routes 127/8 over
its veth (`route_localnet` lets a loopback destination leave a non-loopback device), and
the lab's host side accepts it (`route_localnet` on its end of the pair) and rewrites the
source to 127.0.0.1 (an nftables `snat` on the input hook of that one interface), so that
pg_hba, BIND's allow-query and Redis see a local client, exactly as for the first worker.
Nothing else on the host is touched: the rule is scoped to the pair's interface, in a
table of its own, deleted on stop; the pair goes with the namespace.

Needs root, `ip` (iproute2), `nft` (nftables), `unshare` and `nsenter` (util-linux).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import proc
from .state import LAB_DIR, REPO_DIR, LabError

CONTROLLERS_DIR = LAB_DIR / "controllers"
# RFC 2544's benchmarking range: never a real network on the lab machine.
SUBNET = "198.18.{index}"


@dataclass
class Controller:
    name: str  # also its hostname
    index: int  # 1-250: its veth names and /30 subnet
    holder: int  # host pid of the namespaces' pid 1
    launcher: int | None = None  # host pid of the nsenter that started the worker

    @property
    def folder(self) -> Path:
        return CONTROLLERS_DIR / self.name

    @property
    def host_side(self) -> str:
        return f"elctl{self.index}h"

    @property
    def table(self) -> str:
        return f"elephaas_controller_{self.index}"

    def worker_pid(self) -> int | None:
        """Host pid of the worker (the launcher's child), None once it has exited."""
        if not self.launcher:
            return None
        children = _children(self.launcher)
        return children[0] if children else None

    def net_ns(self) -> str | None:
        try:
            return os.readlink(f"/proc/{self.holder}/ns/net")
        except OSError:
            return None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("a second controller needs root (namespaces, veth, nftables)")
    missing = [c for c in ("ip", "nft", "unshare", "nsenter") if not shutil.which(c)]
    if missing:
        raise LabError(
            f"missing {', '.join(missing)}: apt-get install iproute2 nftables util-linux"
        )


def start_host(name: str, index: int, *, tied: bool = False) -> Controller:
    """The controller's namespaces and network; no worker yet. `tied`: it ends when the
    calling process does (a test session), not only on stop_host (the lab's).

    1. a holder process (`sleep`, pid 1 of a new PID namespace) in new network, mount,
       UTS and PID namespaces, with its hostname and a private /tmp; when the `unshare`
       that made them ends, it is killed (`--kill-child`), taking the namespaces with it;
    2. a veth pair: 198.18.<index>.1 on the lab's side, .2 inside, 127/8 routed over it;
    3. route_localnet on both ends, and the nftables snat rule on the lab's side.
    """
    _require_tools()
    if not 1 <= index <= 250:
        raise LabError("controller index must be between 1 and 250")
    stop_host(name, index)  # idempotent: whatever an earlier run left goes first
    folder = CONTROLLERS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready"
    ready.unlink(missing_ok=True)
    script = f"hostname {name} && mount -t tmpfs tmpfs /tmp && touch {ready} && exec sleep infinity"
    launcher = proc.spawn(
        [
            "unshare",
            "--net",
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "--kill-child=SIGKILL",
            "--",
            "sh",
            "-c",
            script,
        ],
        folder / "unshare.pid",
        LAB_DIR / "log" / f"{name}-holder.log",
        preexec_fn=_die_with_parent if tied else None,
    )
    deadline = time.monotonic() + 10
    while not ready.exists() or not _children(launcher):
        if not proc.alive(launcher) or time.monotonic() > deadline:
            raise LabError(f"could not create the namespaces of controller {name}")
        time.sleep(0.02)
    holder = _children(launcher)[0]
    (folder / "holder.pid").write_text(f"{holder}\n")
    controller = Controller(name, index, holder)
    subnet = SUBNET.format(index=index)
    inside = f"elctl{index}n"
    host = controller.host_side
    proc.run(
        ["ip", "link", "add", host, "type", "veth", "peer", "name", inside, "netns", str(holder)]
    )
    proc.run(["ip", "addr", "add", f"{subnet}.1/30", "dev", host])
    proc.run(["ip", "link", "set", host, "up"])
    Path(f"/proc/sys/net/ipv4/conf/{host}/route_localnet").write_text("1\n")
    _in(controller, ["ip", "addr", "add", f"{subnet}.2/30", "dev", inside])
    _in(controller, ["ip", "link", "set", inside, "up"])
    for conf in ("all", inside):
        _in(controller, ["sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.route_localnet=1"])
    # The namespace's loopback stays down: all of 127/8 is the lab's, over the pair.
    _in(
        controller,
        ["ip", "route", "add", "127.0.0.0/8", "via", f"{subnet}.1", "src", f"{subnet}.2"],
    )
    proc.run(
        ["nft", "-f", "-"],
        input=(
            f"table ip {controller.table} {{\n"
            "  chain input {\n"
            "    type nat hook input priority 100; policy accept;\n"
            f'    iifname "{host}" snat to 127.0.0.1\n'
            "  }\n"
            "}\n"
        ),
    )
    return controller


def _in(controller: Controller, argv: Sequence[str]) -> None:
    proc.run(["nsenter", f"--target={controller.holder}", "--net", "--", *argv])


def _die_with_parent() -> None:
    # The holder goes when whatever started it goes (a test session killed mid-run).
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_worker(
    controller: Controller,
    argv: Sequence[str],
    env: dict[str, str],
    log: Path,
    timeout: float = 60,
    *,
    tied: bool = False,
) -> Controller:
    """Run a worker (`argv`, e.g. fleet.worker_argv(...)) inside the controller's
    namespaces; returns once it runs there."""
    pidfile = controller.folder / "launcher.pid"
    controller.launcher = proc.spawn(
        [
            "nsenter",
            f"--target={controller.holder}",
            "--net",
            "--mount",
            "--uts",
            "--pid",
            # Entering a mount namespace moves the working directory to its root.
            f"--wd={REPO_DIR}",
            "--",
            *argv,
        ],
        pidfile,
        log,
        env=env,
        cwd=REPO_DIR,
        preexec_fn=_die_with_parent if tied else None,
    )
    deadline = time.monotonic() + timeout
    while controller.worker_pid() is None:
        if not proc.alive(controller.launcher) or time.monotonic() > deadline:
            raise LabError(f"the worker of controller {controller.name} did not start: see {log}")
        time.sleep(0.05)
    return controller


def stop_host(name: str, index: int) -> None:
    """Everything of the controller goes: SIGKILL to its pid 1 ends every process in its
    PID namespace (the worker too); the veth pair goes with the network namespace; the
    nftables table is deleted."""
    folder = CONTROLLERS_DIR / name
    holder = proc.running_from(folder / "holder.pid")
    if holder:
        os.kill(holder, signal.SIGKILL)
        for _ in range(200):
            if not proc.alive(holder):
                break
            time.sleep(0.02)
    for pidfile in (folder / "launcher.pid", folder / "unshare.pid"):
        pid = proc.running_from(pidfile)
        if pid:
            proc.stop_pid(pid, f"controller {name}", timeout=5)
        pidfile.unlink(missing_ok=True)
    proc.run(["nft", "delete", "table", "ip", f"elephaas_controller_{index}"], check=False)
    proc.run(["ip", "link", "delete", f"elctl{index}h"], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def running() -> list[tuple[str, int]]:
    """(name, host pid of its pid 1) of this lab's controllers that run."""
    found = []
    if CONTROLLERS_DIR.is_dir():
        for folder in sorted(CONTROLLERS_DIR.iterdir()):
            holder = proc.running_from(folder / "holder.pid")
            if holder:
                found.append((folder.name, holder))
    return found


def pids(holder: int) -> list[int]:
    """Host pids of every process in the PID namespace whose pid 1 is `holder`."""
    try:
        ns = os.readlink(f"/proc/{holder}/ns/pid")
    except OSError:
        return []
    result = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    result.append(int(entry))
            except OSError:
                pass
    return result
