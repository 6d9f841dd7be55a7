#!/usr/bin/env python3
"""Health sweep: its cost per instance on a fleet, and a fleet with a silent address.

Run on the default lab (24 instances it builds) or on the scale lab (its 200):
    python -m lab up && .venv/bin/python bench/bench_health.py [--repeat 5] [--keep]
    LAB_DIR=.lab-scale .venv/bin/python bench/bench_health.py

1. Default lab: build 6 herds x 4 instances (ports 5601-5606; the primary rotates over
   srv1..srv4, the replicas are the other three servers). Scale lab: its fleet as built
   by `up --profile scale` (lab/scale.py), nothing built.
2. Create a scratch database (elephaas_bench_health) through Django's test-database
   machinery, so the sweep sees exactly the rows this benchmark creates (the fleet, from
   the lab's own description of it: no discovery).
3. With one instance in the inventory, time the sweep (probe + write) `--repeat` times;
   then with the whole fleet, the same, and one probe at a time; then the fleet plus one
   address that accepts TCP and never answers.
4. Print the medians, the cost per instance and the ratio fleet/1; drop the scratch
   database, and the herds it built (unless --keep).

Goal: with a silent address in the fleet, what answered is written within 2 s (the
silent instance is recorded as not answering when its probe times out). Exit status 1
when missed. (The old goal, 24 instances within twice one, said little about a fleet of
hundreds.)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

BENCH_DATABASE = "elephaas_bench_health"
SERVERS = (1, 2, 3, 4)
# name, port, primary server, replica servers: the default lab's 6 herds, built here.
HERDS = [
    (f"healthbench{i}", 5600 + i, primary, tuple(n for n in SERVERS if n != primary))
    for i, primary in ((i, (i - 1) % 4 + 1) for i in range(1, 7))
]
GOAL_SILENT_SECONDS = 2.0


def scale_lab() -> bool:
    from lab import state

    return state.PROFILE.name == "scale"


def fleet_herds() -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(name, port, primary server, replica servers) of every herd swept."""
    if not scale_lab():
        return HERDS
    from lab import scale, state

    return [(p.name, p.port, p.primary, p.replicas) for p in scale.layout(len(state.servers()))]


def build_lab_herds() -> None:
    from lab import herd as lab_herd

    for name, port, primary, replicas in HERDS:
        started = time.monotonic()
        lab_herd.create(name, primary, list(replicas), port)
        print(f"  lab herd {name} on port {port}: {time.monotonic() - started:.1f} s", flush=True)


def drop_lab_herds() -> None:
    from lab import herd as lab_herd

    for name, *_ in HERDS:
        lab_herd.drop(name)


def create_inventory(only_first: bool = False) -> None:
    """Rows for the fleet's instances (or only the first herd's primary); idempotent."""
    from herds.models import Environment, Herd
    from instances.models import Instance, Role, Server
    from lab import fleet, state

    lab_servers = {server.number: server for server in state.servers()}
    environment, _ = Environment.objects.get_or_create(name="bench")
    servers = {}

    def server(number: int) -> Server:
        if number not in servers:
            servers[number] = Server.objects.get_or_create(
                hostname=lab_servers[number].hostname,
                defaults={
                    "environment": environment,
                    "ssh_port": lab_servers[number].ssh_port,
                    "ssh_user": lab_servers[number].ssh_user,
                },
            )[0]
        return servers[number]

    version = int(fleet.pg_version())
    herds = fleet_herds()
    for name, port, primary_number, replicas in herds[:1] if only_first else herds:
        herd, _ = Herd.objects.get_or_create(
            name=name, environment=environment, port=port, pg_version=version
        )
        primary, _ = Instance.objects.get_or_create(
            herd=herd, server=server(primary_number), role=Role.PRIMARY
        )
        if only_first:
            return
        for number in replicas:
            Instance.objects.get_or_create(
                herd=herd, server=server(number), role=Role.REPLICA, upstream=primary
            )


FIRST_WRITES: dict[int, list[float]] = {}


def time_sweeps(repeat: int, expect_online: int) -> list[float]:
    """Whole sweeps' seconds; each sweep's first write (what answered, written) is kept
    in FIRST_WRITES under the same list's id."""
    from instances import health

    health.sweep()  # warm: first connections, imports
    timings, firsts = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        summary = health.sweep()
        timings.append(time.perf_counter() - started)
        firsts.append(summary.first_write)
        if summary.online != expect_online:
            sys.exit(f"bench: expected {expect_online} online, the sweep saw {summary}")
    FIRST_WRITES[id(timings)] = firsts
    return timings


def median_line(label: str, timings: list[float]) -> str:
    runs = ", ".join(f"{t * 1000:.0f}" for t in timings)
    first = FIRST_WRITES[id(timings)]
    return (
        f"{label:<28} median {statistics.median(timings) * 1000:7.1f} ms, answering ones "
        f"written after {statistics.median(first) * 1000:7.1f} ms  (runs: {runs})"
    )


def silent_addresses(count: int) -> list[str]:
    from lab import state

    # .201-.250: never a lab server (a scale lab has 40, the default 4).
    return [f"{state.ADDRESS_PREFIX}.{251 - k}" for k in range(count)]


def sweep_with_silent(
    herd, port: int, count: int, repeat: int
) -> tuple[list[float], list[tuple[bool | None, str]]]:
    """Sweeps with `count` more instances, each on an address that accepts TCP and never
    answers (a server that hangs; many of them: a data centre cut off mid-handshake)."""
    from instances.models import Instance, Role, Server

    listeners = []
    for address in silent_addresses(count):
        server, _ = Server.objects.get_or_create(
            hostname=address, defaults={"environment": herd.environment}
        )
        Instance.objects.get_or_create(herd=herd, server=server, port=port, role=Role.REPLICA)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(16)  # the kernel completes the handshake; nobody ever answers
        listeners.append(listener)
    answering = Instance.objects.count() - count
    runs = max(1, min(repeat, 3))
    print(f"sweep over {answering} instances + {count} silent ({runs} runs)…", flush=True)
    try:
        timings = time_sweeps(runs, expect_online=answering)
        recorded = list(
            Instance.objects.filter(server__hostname__in=silent_addresses(count)).values_list(
                "online", "last_error"
            )
        )
        return timings, recorded
    finally:
        for listener in listeners:
            listener.close()
        Instance.objects.filter(server__hostname__in=silent_addresses(count)).delete()
        Server.objects.filter(hostname__in=silent_addresses(count)).delete()


def run(repeat: int, silent_count: int) -> int:
    from django.conf import settings

    from herds.models import Herd
    from instances.models import Instance, Role

    herds = fleet_herds()
    size = sum(1 + len(replicas) for *_, replicas in herds)
    create_inventory(only_first=True)
    assert Instance.objects.count() == 1
    print(f"sweep over 1 instance ({repeat} runs)…", flush=True)
    single = time_sweeps(repeat, expect_online=1)

    create_inventory()
    assert Instance.objects.count() == size
    print(f"sweep over {size} instances ({repeat} runs)…", flush=True)
    fleet = time_sweeps(repeat, expect_online=size)
    # For context: the same sweep one probe at a time.
    concurrency = settings.HEALTH_CONCURRENCY
    settings.HEALTH_CONCURRENCY = 1
    print(f"sweep over {size} instances, one probe at a time ({repeat} runs)…", flush=True)
    serial = time_sweeps(repeat, expect_online=size)
    settings.HEALTH_CONCURRENCY = concurrency
    lags = list(Instance.objects.filter(role=Role.REPLICA).values_list("lag_bytes", flat=True))

    name, port, *_ = herds[0]
    first = Herd.objects.get(name=name)
    stalled, [silent] = sweep_with_silent(first, port, 1, repeat)
    many = sweep_with_silent(first, port, silent_count, repeat)[0] if silent_count > 1 else None

    single_median, fleet_median = statistics.median(single), statistics.median(fleet)
    stalled_median = statistics.median(stalled)
    print()
    print(median_line("sweep, 1 instance:", single))
    print(median_line(f"sweep, {size} instances:", fleet))
    print(median_line(f"sweep, {size} one at a time:", serial))
    print(median_line(f"sweep, {size} + 1 silent:", stalled))
    if many:
        print(median_line(f"sweep, {size} + {silent_count} silent:", many))
    print(f"the silent one recorded: online={silent[0]}, {silent[1]!r}")
    print(
        f"cost per instance: {fleet_median / size * 1000:.2f} ms in a sweep of {size} "
        f"({(fleet_median - single_median) / (size - 1) * 1000:.2f} ms each beyond the first); "
        f"one at a time {statistics.median(serial) / size * 1000:.2f} ms"
    )
    print(f"replica lag recorded (bytes): max {max(lags)}, all measured: {None not in lags}")
    print(
        f"CPUs: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, HEALTH_CONCURRENCY: "
        f"{concurrency}, probe connect timeout {settings.PG_PROBE_CONNECT_TIMEOUT} s"
    )
    print(f"ratio {size}/1:  {fleet_median / single_median:.2f}x")
    fresh = statistics.median(FIRST_WRITES[id(stalled)])
    ok = fresh <= GOAL_SILENT_SECONDS and silent[0] is False
    print(
        f"sweep with a silent address: the {size} answering instances written after "
        f"{fresh:.2f} s (goal <= {GOAL_SILENT_SECONDS:g} s): {'met' if ok else 'MISSED'}; "
        f"the silent one after {stalled_median:.2f} s (its probe's timeout)"
    )
    return 0 if ok else 1


def main() -> int:
    from lab import state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed sweeps per fleet size")
    parser.add_argument("--keep", action="store_true", help="keep the 6 lab herds afterwards")
    parser.add_argument(
        "--silent", type=int, default=50, help="silent addresses of the last case (max 50)"
    )
    args = parser.parse_args()

    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    if not state.is_up() or len(state.servers()) < len(SERVERS):
        print("bench: needs the lab with 4 servers: python -m lab up --servers 4")
        return 2
    build = not scale_lab()
    try:
        if build:
            print("building 6 herds x 4 instances on the lab…", flush=True)
            build_lab_herds()
        setup_test_environment()
        # create_test_db returns the scratch name; destroy_test_db wants the real one back.
        real_name = connection.settings_dict["NAME"]
        connection.creation.create_test_db(verbosity=0, autoclobber=True)
        try:
            return run(args.repeat, min(args.silent, 50))
        finally:
            connection.creation.destroy_test_db(real_name, verbosity=0)
            teardown_test_environment()
    finally:
        if build and not args.keep:
            drop_lab_herds()


if __name__ == "__main__":
    import django
    from django.conf import settings

    # Before setup: the test-database machinery then creates and drops this name, never
    # touching the real metadata database (whose inventory as_found() checks).
    settings.DATABASES["default"]["TEST"] = {"NAME": BENCH_DATABASE}
    django.setup()

    from _inventory import as_found

    with as_found():
        sys.exit(main())
