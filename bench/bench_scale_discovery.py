#!/usr/bin/env python3
"""Discovery of 40 servers (200 instances) through the worker, against the same
pg_lsclusters calls run by hand in parallel.

    nice -n 19 python -m lab up --profile scale
    LAB_DIR=.lab-scale .venv/bin/python bench/bench_scale_discovery.py [--rounds 3]

1. Add the scale lab's servers to the inventory (pinned host keys) where missing.
2. ElepHaaS: one Discover job per server, queued at once, run by the lab's worker (list the
   clusters over SSH, probe each running one with SQL, reconcile the rows); wall time from
   queueing to the last job's end. When the inventory held none of the fleet, the first
   round is a first discovery (200 rows added) and is shown apart.
3. By hand: `ssh postgres@server pg_lsclusters --json` to the 40 servers at once (OpenSSH,
   as `xargs -P 40` would), wall time: with a new connection each, and over connections
   already open (ControlMaster), as ElepHaaS's pool has them.
4. Print the medians, ElepHaaS / by hand, and where a job's time goes (queue wait,
   listing, probes).

Goal (ours: the issue sets none): rediscovering the fleet costs at most twice listing it
by hand over open connections, although ElepHaaS also probes the 200 instances with SQL
and reconciles their rows. Exit status 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

from _scale import (  # noqa: E402
    by_controller,
    discover,
    masters,
    require_scale_lab,
    require_worker,
    run_by_hand,
    server_rows,
    ssh_argv,
)
from django.conf import settings  # noqa: E402

from instances.models import Instance, Job, JobStep  # noqa: E402

GOAL_RATIO = 2.0


def by_hand(rows, master=None) -> tuple[float, int]:
    seconds, outputs = run_by_hand([ssh_argv(r, ["pg_lsclusters", "--json"], master) for r in rows])
    return seconds, sum(len(json.loads(out)) for out in outputs)


def where_time_went(rows, since_pk: int) -> str:
    jobs = list(Job.objects.filter(server__in=rows, kind="discover", pk__gt=since_pk))
    waits = [(j.started_at - j.created_at).total_seconds() for j in jobs]
    runs = [(j.finished_at - j.started_at).total_seconds() for j in jobs]
    steps = JobStep.objects.filter(job__in=jobs)
    listing = [s.duration for s in steps if s.name.startswith("list clusters")]
    probes = [s.duration for s in steps if s.name.startswith("probe ")]
    return (
        f"queue wait median {statistics.median(waits):.2f} s max {max(waits):.2f} s; "
        f"job median {statistics.median(runs):.2f} s max {max(runs):.2f} s; "
        f"pg_lsclusters step median {statistics.median(listing) * 1000:.0f} ms; "
        f"SQL probe median {statistics.median(probes) * 1000:.0f} ms ({len(probes)} probes); "
        f"ran on: {by_controller(jobs)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lab_servers = require_scale_lab()
    require_worker()
    rows = server_rows(lab_servers)
    first = not Instance.objects.filter(server__in=rows).exists()
    print(
        f"{len(rows)} servers; worker concurrency {settings.WORKER_CONCURRENCY}, "
        f"{settings.SSH_MAX_PER_SERVER} commands per server at most",
        flush=True,
    )
    first_seconds = None
    if first:
        mark = Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        first_seconds = discover(rows)
        found = Instance.objects.filter(server__in=rows).count()
        print(f"first discovery: {first_seconds:.2f} s, {found} instances added", flush=True)
        print(f"  {where_time_went(rows, mark)}", flush=True)
    elephaas, hand, warm = [], [], []
    with masters(rows) as master:
        for number in range(1, args.rounds + 1):
            mark = Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            elephaas.append(discover(rows))
            seconds, clusters = by_hand(rows)
            hand.append(seconds)
            warm.append(by_hand(rows, master)[0])
            print(
                f"round {number}: ElepHaaS {elephaas[-1]:.2f} s, by hand {seconds:.2f} s (new "
                f"SSH connections), {warm[-1]:.2f} s (connections open); {clusters} clusters "
                f"listed; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            print(f"  {where_time_went(rows, mark)}", flush=True)
    instances = Instance.objects.filter(server__in=rows).count()
    median = statistics.median(elephaas)
    ratio = median / statistics.median(warm)
    print()
    if first_seconds is not None:
        print(f"first discovery (rows added):        {first_seconds:6.2f} s")
    print(
        f"rediscovery, {len(rows)} servers / {instances} instances: median {median:6.2f} s  "
        f"(per server {median / len(rows) * 1000:.0f} ms)"
    )
    print(f"pg_lsclusters by hand, new connections:   median {statistics.median(hand):6.2f} s")
    print(f"pg_lsclusters by hand, connections open:  median {statistics.median(warm):6.2f} s")
    print(f"ratio ElepHaaS / by hand (new connections):  {median / statistics.median(hand):.2f}x")
    print(f"ratio ElepHaaS / by hand (connections open): {ratio:.2f}x  (goal <= {GOAL_RATIO:g}x)")
    if first_seconds is not None:
        first_ratio = first_seconds / statistics.median(warm)
        print(f"ratio first discovery / by hand (open):      {first_ratio:.2f}x")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        sys.exit(main())
