"""Fan-out: restart 1 instance vs a batch of 24 spread over the lab servers.

Whole-batch wall time from queueing to the last job done, through the lab's real Celery
worker. Goal: batch <= 3x single (the original ran them one by one: about 24x).

    python -m lab up && .venv/bin/python bench/bench_fanout.py [--rounds 3] [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

from herds.models import Environment, Herd  # noqa: E402
from instances.jobs import queue, runner  # noqa: E402
from instances.models import Instance, Job, JobKind, JobState, Server  # noqa: E402
from lab import herd as lab_herd  # noqa: E402
from lab import state  # noqa: E402

HERDS = [(f"fan{i}", 5700 + i, (i - 1) % 4 + 1) for i in range(1, 7)]  # name, port, primary


def build_fleet() -> list[Instance]:
    """6 herds x 4 instances (24), primaries rotating over srv1..srv4, in the inventory."""
    servers = {s.number: s for s in state.servers()}
    if len(servers) < 4:
        sys.exit("bench: needs 4 lab servers (python -m lab up --servers 4)")
    for name, port, primary in HERDS:
        lab_herd.create(name, primary, [n for n in range(1, 5) if n != primary], port)
    env, _ = Environment.objects.get_or_create(name="bench")
    rows = []
    for number in range(1, 5):
        lab = servers[number]
        row = Server.objects.filter(hostname=lab.hostname).first() or Server.objects.create(
            environment=env, **lab.inventory_fields()
        )
        rows.append(row)
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, rows, queue=False))
    fleet = list(
        Instance.objects.select_related("server", "herd")
        .filter(herd__name__in=[name for name, _, _ in HERDS])
        .order_by("port", "server__hostname")
    )
    if len(fleet) != 24:
        sys.exit(f"bench: expected 24 instances, discovery found {len(fleet)}")
    return fleet


def timed_batch(instances: list[Instance]) -> float:
    started = time.monotonic()
    created = queue.create_jobs(JobKind.RESTART, instances, params={"mode": "fast"})
    ids = [j.pk for j in created]
    deadline = started + 600
    while True:
        states = list(Job.objects.filter(pk__in=ids).values_list("state", flat=True))
        if all(s in JobState.terminal() for s in states):
            break
        if time.monotonic() > deadline:
            sys.exit("bench: jobs still running after 600 s")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    failed = Job.objects.filter(pk__in=ids).exclude(state=JobState.SUCCEEDED)
    if failed.exists():
        sys.exit("bench: failed jobs: " + "; ".join(f"#{j.pk} {j.error}" for j in failed))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the 6 bench herds")
    args = parser.parse_args()
    from elephaas.celery import ping

    try:
        ping.delay("bench").get(timeout=10)
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"bench: the lab worker does not answer ({exc}): run python -m lab up")
    fleet = build_fleet()
    try:
        timed_batch(fleet[:1])  # warm the worker's SSH connections and code paths
        singles = [timed_batch([fleet[i % len(fleet)]]) for i in range(args.rounds)]
        batches = [timed_batch(fleet) for _ in range(args.rounds)]
    finally:
        if not args.keep:
            Job.objects.filter(instance__herd__name__in=[h for h, _, _ in HERDS]).delete()
            Instance.objects.filter(herd__name__in=[h for h, _, _ in HERDS]).delete()
            Herd.objects.filter(name__in=[h for h, _, _ in HERDS]).delete()
            for name, _, _ in HERDS:
                lab_herd.drop(name)
    single, batch = statistics.median(singles), statistics.median(batches)
    ratio = batch / single
    print(
        f"restart 1 instance:    median {single:6.2f} s  (rounds: "
        + ", ".join(f"{x:.2f}" for x in singles)
        + ")"
    )
    print(
        f"restart 24 instances:  median {batch:6.2f} s  (rounds: "
        + ", ".join(f"{x:.2f}" for x in batches)
        + ")"
    )
    print(f"ratio batch/single:    {ratio:.2f}x  (goal <= 3x; one by one would be ~24x)")
    sys.exit(0 if ratio <= 3 else 1)


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        main()
