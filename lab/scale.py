"""The scale profile's fleet: dozens of servers, hundreds of small instances.

`python -m lab up --profile scale` (40 servers unless `--servers` says) fills every server
with PER_SERVER instances, as herds of a primary and 1–3 replicas on consecutive servers
(60 herds, 200 instances on 40 servers). The instances are PostgreSQL made small
(SCALE_SETTINGS: 1 MB of shared buffers, 10 connections, no autovacuum or logical
replication launchers) so that 200 of them fit a 2-core machine beside the default lab.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from . import controller, fleet, herd, proc
from .state import LabError

PER_SERVER = 5
# Herd sizes, in turn: a primary and 3, 2, 2 replicas. 40 servers x 5 = 200 instances
# are then 60 herds (20 of 4 and 40 of 3), 140 of them replicas.
SIZES = (4, 3, 3)
FIRST_PORT = 6001

SCALE_SETTINGS = {
    **herd.INSTANCE_SETTINGS,
    # 4 MB of shared memory in all (postgres -C shared_memory_size), against 39 MB with
    # the default lab's 32 MB of buffers and 50 connections.
    "shared_buffers": "'1MB'",
    "max_connections": "10",
    # A herd has at most 4 members; one more sender for a pg_basebackup or a pg_rewind.
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    # One process less per primary each: nothing here needs them (the benchmarks write
    # a few rows, never enough for autovacuum to matter).
    "autovacuum": "off",
    "max_logical_replication_workers": "0",
    "max_worker_processes": "2",
    "max_parallel_workers": "0",
    "wal_keep_size": "'64MB'",
    "max_wal_size": "'64MB'",
    "min_wal_size": "'32MB'",
    "huge_pages": "off",
}
# The lab's data is disposable: initdb need not fsync its 1,000 files (half its time).
INITDB_OPTIONS = ("--no-sync",)


@dataclass(frozen=True)
class HerdPlan:
    name: str
    port: int
    primary: int
    replicas: tuple[int, ...]

    @property
    def members(self) -> tuple[int, ...]:
        return (self.primary, *self.replicas)


def layout(servers: int, per_server: int = PER_SERVER) -> list[HerdPlan]:
    """The herds of a scale lab of `servers` servers (pure).

    Members are laid out one after another over the servers, wrapping round, each round
    shifted by one server so that primaries do not pile up on the same few: a herd's
    members are on distinct servers, and every server ends up with exactly `per_server`
    instances. Each herd has a port of its own.
    """
    if servers < 1 or per_server < 1:
        raise LabError("a scale lab needs at least one server and one instance per server")
    slots = servers * per_server
    plans: list[HerdPlan] = []
    cursor = 0
    while cursor < slots:
        size = min(SIZES[len(plans) % len(SIZES)], slots - cursor, servers)
        members = [_server(cursor + k, servers) for k in range(size)]
        number = len(plans) + 1
        plans.append(
            HerdPlan(f"sc{number:03d}", FIRST_PORT + len(plans), members[0], tuple(members[1:]))
        )
        cursor += size
    return plans


def _server(position: int, servers: int) -> int:
    # Round r (positions r*servers…) is shifted by r: still one instance per server and
    # round. A herd spanning two rounds skips one server, so its members stay distinct
    # while a herd is smaller than the number of servers; with fewer servers, no shift.
    shift = position // servers if servers > max(SIZES) else 0
    return (position + shift) % servers + 1


def _built(plan: HerdPlan, version: str) -> bool:
    """Every member's cluster exists (whatever its role now: a drill may have moved the
    primary, and building it again would try to write on a replica)."""
    return all(
        (fleet.server_ns(n).folder / "etc" / version / plan.name / "postgresql.conf").exists()
        and (fleet.server_ns(n).folder / "lib" / version / plan.name / "PG_VERSION").exists()
        for n in plan.members
    )


def build(servers: int, jobs: int = 4, say: Callable[[str], None] = fleet.say) -> float:
    """Build the missing herds of the layout, `jobs` herds at a time; returns seconds.

    Idempotent: a herd whose clusters all exist is left as it is (boot_clusters has
    started those whose start.conf says auto)."""
    version = fleet.pg_version()
    plans = layout(servers)
    missing = [p for p in plans if not _built(p, version)]
    started = time.monotonic()
    if not missing:
        say(f"scale fleet: {len(plans)} herds already built")
        return 0.0
    say(f"scale fleet: building {len(missing)} of {len(plans)} herds, {jobs} at a time")
    errors = []
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="scale") as pool:
        futures = {
            pool.submit(
                herd.create,
                p.name,
                p.primary,
                list(p.replicas),
                p.port,
                version,
                SCALE_SETTINGS,
                INITDB_OPTIONS,
            ): p
            for p in missing
        }
        for done, future in enumerate(as_completed(futures), 1):
            plan = futures[future]
            try:
                future.result()
            except LabError as exc:
                errors.append(f"{plan.name}: {exc}")
            if done % 10 == 0 or done == len(missing):
                say(f"  {done}/{len(missing)} herds in {time.monotonic() - started:.0f} s")
    if errors:
        raise LabError("some herds could not be built:\n" + "\n".join(errors))
    return time.monotonic() - started


# --- what the lab costs ------------------------------------------------------------------------


@dataclass
class Memory:
    processes: int = 0
    rss_kib: int = 0
    pss_kib: int = 0
    postgres_processes: int = 0
    postgres_rss_kib: int = 0
    postgres_pss_kib: int = 0


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def lab_pids() -> list[int]:
    """Every process of this lab: what runs in its namespaces (servers, metadata
    database, other controllers) and the services it started with a pid file (Redis,
    BIND, slapd, Celery)."""
    namespaces = {fleet.meta_ns().ns_file} | {
        fleet.server_ns(n).ns_file for n in fleet._known_servers()
    }
    wanted = set()
    for ns_file in namespaces:
        try:
            wanted.add(ns_file.read_text().strip())
        except FileNotFoundError:
            pass
    pids = {p for p in (proc.running_from(f) for _, f in fleet.services()) if p}
    for _name, holder in controller.running():
        pids.update(controller.pids(holder))
    for entry in os.listdir("/proc"):
        if entry.isdigit() and proc.mount_ns(int(entry)) in wanted:
            pids.add(int(entry))
    return sorted(pids)


def memory() -> Memory:
    """RSS summed over the lab's processes (counts shared pages once per process: an
    upper bound), and PSS (shared pages split between their users: what it really takes)."""
    total = Memory()
    for pid in lab_pids():
        rss = _kib(f"/proc/{pid}/status", "VmRSS:")
        pss = _kib(f"/proc/{pid}/smaps_rollup", "Pss:")
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except FileNotFoundError:
            continue
        total.processes += 1
        total.rss_kib += rss
        total.pss_kib += pss
        if comm == "postgres" or comm.startswith("postgres"):
            total.postgres_processes += 1
            total.postgres_rss_kib += rss
            total.postgres_pss_kib += pss
    return total


def describe_memory(m: Memory) -> str:
    return (
        f"{m.processes} processes, RSS sum {m.rss_kib / 1024:.0f} MiB, PSS sum "
        f"{m.pss_kib / 1024:.0f} MiB (PostgreSQL: {m.postgres_processes} processes, RSS "
        f"{m.postgres_rss_kib / 1024:.0f} MiB, PSS {m.postgres_pss_kib / 1024:.0f} MiB)"
    )
