#!/usr/bin/env python3
"""Health sweep over 1 instance vs 24 real instances on the lab.

Run: python -m lab up && .venv/bin/python bench/bench_health.py [--repeat 5] [--keep]

1. Build 6 herds x 4 instances on the lab (ports 5601-5606; the primary rotates over
   srv1..srv4, the replicas are the other three servers): 24 running PostgreSQL instances.
2. Create a scratch database (elephaas_bench_health) through Django's test-database
   machinery, so the sweep sees exactly the rows this benchmark creates.
3. With one instance in the inventory, time the sweep (probe + write) `--repeat` times;
   then with all 24, the same; then with 24 plus one address that accepts TCP and never
   answers (it costs one probe timeout, not one per instance).
4. Print the medians and the ratio 24/1, drop the scratch database, and drop the herds
   (unless --keep).

Goal: the sweep over 24 instances takes at most twice as long as over 1 (probes run
concurrently). Exit status 1 when missed.
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
# name, port, primary server; replicas on the other three servers.
HERDS = [(f"healthbench{i}", 5600 + i, (i - 1) % 4 + 1) for i in range(1, 7)]
SILENT_ADDRESS = "127.0.1.251"
GOAL_RATIO = 2.0


def build_lab_herds() -> None:
    from lab import herd as lab_herd

    for name, port, primary in HERDS:
        started = time.monotonic()
        lab_herd.create(name, primary, [n for n in SERVERS if n != primary], port)
        print(f"  lab herd {name} on port {port}: {time.monotonic() - started:.1f} s", flush=True)


def drop_lab_herds() -> None:
    from lab import herd as lab_herd

    for name, _, _ in HERDS:
        lab_herd.drop(name)


def create_inventory(only_first: bool = False) -> None:
    """Rows for the 24 instances (or only the first herd's primary); idempotent."""
    from herds.models import Environment, Herd
    from instances.models import Instance, Role, Server
    from lab import fleet, state

    lab_servers = {server.number: server for server in state.servers()}
    environment, _ = Environment.objects.get_or_create(name="bench")
    servers = {
        number: Server.objects.get_or_create(
            hostname=lab_servers[number].hostname,
            defaults={
                "environment": environment,
                "ssh_port": lab_servers[number].ssh_port,
                "ssh_user": lab_servers[number].ssh_user,
            },
        )[0]
        for number in SERVERS
    }
    version = int(fleet.pg_version())
    for name, port, primary_number in HERDS[:1] if only_first else HERDS:
        herd, _ = Herd.objects.get_or_create(
            name=name, environment=environment, port=port, pg_version=version
        )
        primary, _ = Instance.objects.get_or_create(
            herd=herd, server=servers[primary_number], role=Role.PRIMARY
        )
        if only_first:
            return
        for number in SERVERS:
            if number != primary_number:
                Instance.objects.get_or_create(
                    herd=herd, server=servers[number], role=Role.REPLICA, upstream=primary
                )


def time_sweeps(repeat: int, expect_online: int) -> list[float]:
    from instances import health

    health.sweep()  # warm: first connections, imports
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        summary = health.sweep()
        timings.append(time.perf_counter() - started)
        if summary.online != expect_online:
            sys.exit(f"bench: expected {expect_online} online, the sweep saw {summary}")
    return timings


def run(repeat: int) -> int:
    from django.conf import settings

    from herds.models import Herd
    from instances.models import Instance, Role, Server

    create_inventory(only_first=True)
    assert Instance.objects.count() == 1
    print(f"sweep over 1 instance ({repeat} runs)…", flush=True)
    single = time_sweeps(repeat, expect_online=1)

    create_inventory()
    assert Instance.objects.count() == 24
    print(f"sweep over 24 instances ({repeat} runs)…", flush=True)
    fleet = time_sweeps(repeat, expect_online=24)
    # For context: the same sweep one probe at a time.
    concurrency = settings.HEALTH_CONCURRENCY
    settings.HEALTH_CONCURRENCY = 1
    print(f"sweep over 24 instances, one probe at a time ({repeat} runs)…", flush=True)
    serial = time_sweeps(repeat, expect_online=24)
    settings.HEALTH_CONCURRENCY = concurrency
    lags = list(Instance.objects.filter(role=Role.REPLICA).values_list("lag_bytes", flat=True))

    first = Herd.objects.get(name=HERDS[0][0])
    silent_server = Server.objects.create(hostname=SILENT_ADDRESS, environment=first.environment)
    Instance.objects.create(
        herd=first,
        server=silent_server,
        port=HERDS[0][1],
        role=Role.REPLICA,
    )
    runs = max(1, min(repeat, 3))
    print(f"sweep over 24 instances + 1 silent address ({runs} runs)…", flush=True)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((SILENT_ADDRESS, HERDS[0][1]))
        listener.listen(16)
        stalled = time_sweeps(runs, expect_online=24)

    single_median, fleet_median = statistics.median(single), statistics.median(fleet)
    stalled_median = statistics.median(stalled)
    ratio = fleet_median / single_median
    print()
    print(
        f"sweep, 1 instance:         median {single_median * 1000:7.1f} ms  (runs: "
        + ", ".join(f"{t * 1000:.1f}" for t in single)
        + ")"
    )
    print(
        f"sweep, 24 instances:       median {fleet_median * 1000:7.1f} ms  (runs: "
        + ", ".join(f"{t * 1000:.1f}" for t in fleet)
        + ")"
    )
    print(
        f"sweep, 24 one at a time:   median {statistics.median(serial) * 1000:7.1f} ms  (runs: "
        + ", ".join(f"{t * 1000:.1f}" for t in serial)
        + ")"
    )
    print(
        f"sweep, 24 + 1 silent:      median {stalled_median * 1000:7.1f} ms  "
        f"(probe timeout {settings.PG_PROBE_CONNECT_TIMEOUT} s; runs: "
        + ", ".join(f"{t * 1000:.1f}" for t in stalled)
        + ")"
    )
    print(f"replica lag recorded (bytes): max {max(lags)}, all measured: {None not in lags}")
    print(f"CPUs: {os.cpu_count()}, HEALTH_CONCURRENCY: {concurrency}")
    print(f"ratio 24/1:                {ratio:.2f}x  (goal <= {GOAL_RATIO:g}x)")
    return 0 if ratio <= GOAL_RATIO else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed sweeps per fleet size")
    parser.add_argument("--keep", action="store_true", help="keep the 6 lab herds afterwards")
    args = parser.parse_args()

    import django
    from django.conf import settings

    # Before setup: the test-database machinery then creates and drops this name, never
    # touching the real metadata database.
    settings.DATABASES["default"]["TEST"] = {"NAME": BENCH_DATABASE}
    django.setup()

    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    from lab import state

    if not state.is_up() or len(state.servers()) < len(SERVERS):
        print("bench: needs the lab with 4 servers: python -m lab up --servers 4")
        return 2
    print("building 6 herds x 4 instances on the lab…", flush=True)
    try:
        build_lab_herds()
        setup_test_environment()
        old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
        try:
            return run(args.repeat)
        finally:
            connection.creation.destroy_test_db(old_name, verbosity=0)
            teardown_test_environment()
    finally:
        if not args.keep:
            drop_lab_herds()


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        sys.exit(main())
