"""What the scale benchmarks share: the scale lab's servers in the inventory, discovery
through the lab's worker, waiting for jobs, and commands run by hand over OpenSSH.

Point a benchmark at the scale lab with LAB_DIR (`LAB_DIR=.lab-scale python bench/…`):
lab.state then reads that folder's profile, addresses and ports, and the settings its
elephaas.env. Rows the benchmark adds are removed by _inventory.as_found().
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The audit log's one line per queued job drowns a benchmark's figures.
logging.getLogger("elephaas.audit").setLevel(logging.WARNING)

# Servers 1-10 prod, 11-20 stage, 21-30 dev, the rest dr: a fleet of several
# environments, as the original's 4 environments and 5 data centres.
ENVIRONMENTS = ("prod", "stage", "dev", "dr")


def environment_of(number: int) -> str:
    return ENVIRONMENTS[min((number - 1) // 10, len(ENVIRONMENTS) - 1)]


def require_scale_lab(min_servers: int = 40) -> list:
    """The lab's servers, or exit saying how to bring the scale lab up."""
    from lab import state

    servers = state.servers()
    if not state.is_up() or len(servers) < min_servers:
        sys.exit(
            f"bench: needs the scale lab with {min_servers} servers (python -m lab up "
            f"--profile scale, then LAB_DIR=.lab-scale); {state.LAB_DIR} has "
            f"{len(servers)} server(s), {'up' if state.is_up() else 'down'}"
        )
    return servers


def require_worker() -> None:
    from elephaas.celery import ping

    try:
        ping.delay("bench").get(timeout=10)
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"bench: the lab worker does not answer ({exc}): run python -m lab up")


def server_rows(lab_servers: Sequence) -> list:
    """A Server row per lab server, added with its pinned host key where missing."""
    from herds.models import Environment
    from instances.models import Server

    rows = []
    for lab in lab_servers:
        row = Server.objects.filter(hostname=lab.hostname).first()
        if row is None:
            environment, _ = Environment.objects.get_or_create(name=environment_of(lab.number))
            row = Server.objects.create(environment=environment, **lab.inventory_fields())
        rows.append(row)
    return rows


def wait_jobs(ids: Iterable[int], timeout: float = 600) -> list:
    """Wait until every job has ended; exit naming the first that did not succeed."""
    from instances.models import Job, JobState

    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        states = list(Job.objects.filter(pk__in=ids).values_list("state", flat=True))
        if all(s in JobState.terminal() for s in states):
            break
        if time.monotonic() > deadline:
            sys.exit(f"bench: jobs still running after {timeout:.0f} s")
        time.sleep(0.05)
    jobs = list(Job.objects.filter(pk__in=ids).order_by("pk"))
    failed = [j for j in jobs if j.state != JobState.SUCCEEDED]
    if failed:
        sys.exit(
            f"bench: {len(failed)} job(s) did not succeed: "
            + "; ".join(f"#{j.pk} {j.state} {j.error}" for j in failed[:5])
        )
    return jobs


def by_controller(jobs: Iterable) -> str:
    """How many of the jobs each controller (worker host) ran: `vm 52, controller-2 48`."""
    from collections import Counter

    hosts = Counter(j.worker.rsplit(":", 1)[0] for j in jobs if j.worker)
    return ", ".join(f"{host} {count}" for host, count in hosts.most_common())


def controllers_cpu() -> float:
    """CPU seconds the lab's workers (every controller's) have used so far: what ElepHaaS
    itself costs, apart from the servers' sshd and PostgreSQL."""
    import os

    from lab import controller, fleet, proc

    pids = [proc.running_from(fleet.worker_pidfile())]
    pids += [pid for _name, holder in controller.running() for pid in controller.pids(holder)]
    ticks = 0
    for pid in filter(None, pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def discover(rows: Sequence) -> float:
    """Discover the servers through the lab's worker; seconds from queueing to the last
    job's end."""
    from instances.jobs import queue
    from instances.models import JobKind

    started = time.monotonic()
    jobs = queue.create_jobs(JobKind.DISCOVER, rows)
    wait_jobs([j.pk for j in jobs])
    return time.monotonic() - started


def scale_inventory(min_servers: int = 40) -> list:
    """The scale fleet in the inventory: servers added and discovered where missing.
    Returns the Server rows."""
    from instances.models import Instance

    rows = server_rows(require_scale_lab(min_servers))
    empty = [r for r in rows if not Instance.objects.filter(server=r).exists()]
    if empty:
        seconds = discover(empty)
        print(f"inventory: {len(empty)} server(s) discovered in {seconds:.1f} s", flush=True)
    return rows


def ssh_argv(server, command: Sequence[str], master: Path | None = None) -> list[str]:
    """The OpenSSH command a DBA would type, with the controller's key and pinned hosts;
    with `master`, over the connection open there (masters())."""
    from lab import fleet

    return [
        "ssh",
        *(["-o", f"ControlPath={master / '%C'}"] if master else []),
        "-i",
        str(fleet.CONTROLLER_KEY),
        "-o",
        f"UserKnownHostsFile={fleet.CONTROLLER_DIR / 'known_hosts'}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-p",
        str(server.ssh_port),
        f"{server.ssh_user}@{server.hostname}",
        *command,
    ]


def run_by_hand(
    argvs: Sequence[Sequence[str]],
    servers: Sequence[str] | None = None,
    cap: int | None = None,
) -> tuple[float, list[str]]:
    """Start every command at once (xargs -P), at most `cap` at a time on one server
    (`servers[i]` is where `argvs[i]` runs), wait for all; (seconds, their outputs).
    Exits on any failure: a floor that failed measures nothing."""
    slots: dict[str, threading.Semaphore] = {}
    for name in servers or []:
        slots.setdefault(name, threading.Semaphore(cap or len(argvs)))

    def one(index: int) -> str:
        slot = slots[servers[index]] if servers else contextlib.nullcontext()
        with slot:
            done = subprocess.run(list(argvs[index]), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argvs[index][-4:])} exited {done.returncode}: {done.stderr[-300:]}"
            )
        return done.stdout

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        futures = [pool.submit(one, i) for i in range(len(argvs))]
        try:
            outputs = [f.result() for f in futures]
        except RuntimeError as exc:
            sys.exit(f"bench: by hand: {exc}")
    return time.monotonic() - started, outputs


@contextlib.contextmanager
def masters(servers: Sequence) -> Iterator[Path]:
    """An OpenSSH connection open to each server (ControlMaster), for the floor that pays
    no SSH handshake, as ElepHaaS's pooled connections do not; closed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="elephaas-bench-ssh-"))
    opened = []
    try:
        for server in servers:
            argv = ssh_argv(server, [], folder)
            argv[1:1] = ["-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-f", "-N"]
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            opened.append(server)
        yield folder
    finally:
        for server in opened:
            argv = ssh_argv(server, [], folder)
            argv[1:1] = ["-O", "exit"]
            subprocess.run(argv, capture_output=True, timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
