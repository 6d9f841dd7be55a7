#!/usr/bin/env python3
"""Restart 100 instances in one bulk action through the real worker, against the same
commands run by hand in parallel with the same per-server cap.

    nice -n 19 python -m lab up --profile scale
    LAB_DIR=.lab-scale .venv/bin/python bench/bench_scale_restart.py [--rounds 3] [--count 100]

1. The scale fleet in the inventory (servers added and discovered where missing).
2. The first 100 instances by herd (30 herds, 2-3 instances on each of the 40 servers).
3. ElepHaaS: one Restart (fast) job per instance, queued at once as the admin's bulk
   action does, run by the lab's worker; wall time from queueing to the last job's end.
4. By hand: the same restart command (COMMANDS, `pg_ctlcluster … restart -m fast`) over
   OpenSSH, all at once but at most SSH_MAX_PER_SERVER at a time on one server, as
   `xargs -P` per server would; wall time; once with a new connection per command, once
   over a connection already open to each server (ControlMaster), as ElepHaaS's pool has.
5. Print the medians, ElepHaaS / by hand, where a job's time goes, which controller ran
   how many, and what the rounds cost the metadata database.

Goal: ElepHaaS / by hand with connections open <= 1.3. Exit status 1 when missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

from _scale import (  # noqa: E402
    by_controller,
    controllers_cpu,
    masters,
    require_worker,
    run_by_hand,
    scale_inventory,
    ssh_argv,
    wait_jobs,
)
from django.conf import settings  # noqa: E402
from django.db import connections  # noqa: E402

from instances.commands import quote_argv  # noqa: E402
from instances.jobs import queue  # noqa: E402
from instances.models import Instance, JobKind, JobStep  # noqa: E402
from instances.steps import command_for  # noqa: E402

GOAL_RATIO = 1.3


def chosen(servers, count: int) -> list[Instance]:
    return list(
        Instance.objects.select_related("server", "herd")
        .filter(server__in=servers)
        .order_by("herd__port", "server__hostname")[:count]
    )


class MetadataLoad(threading.Thread):
    """What a round costs the metadata database: rows written (pg_stat_database, all
    sessions: the lab's beat sweeps too) and the most sessions open at once (sampled)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.peak = 0
        self.written = self._written()

    @staticmethod
    def _written() -> int:
        with connections["default"].cursor() as cur:
            cur.execute(
                "SELECT pg_stat_clear_snapshot(), tup_inserted + tup_updated + tup_deleted "
                "FROM pg_stat_database WHERE datname = current_database()"
            )
            return cur.fetchone()[1]

    def run(self) -> None:
        try:
            while not self.halt.wait(0.2):
                with connections["default"].cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    )
                    self.peak = max(self.peak, cur.fetchone()[0])
        finally:
            connections["default"].close()

    def stop(self) -> int:
        """Rows written since it started (the statistics lag by up to half a second)."""
        self.halt.set()
        self.join()
        time.sleep(1)
        return self._written() - self.written


def through_elephaas(instances: list[Instance]) -> tuple[float, list, int, int]:
    """(seconds, jobs, rows written, most metadata sessions at once)"""
    load = MetadataLoad()
    load.start()
    started = time.monotonic()
    jobs = queue.create_jobs(JobKind.RESTART, instances, params={"mode": "fast"})
    done = wait_jobs([j.pk for j in jobs])
    seconds = time.monotonic() - started
    return seconds, done, load.stop(), load.peak


def by_hand(instances: list[Instance], master=None) -> float:
    argvs = [
        ssh_argv(i.server, [quote_argv(command_for("restart", i, mode="fast"))], master)
        for i in instances
    ]
    seconds, _ = run_by_hand(
        argvs, [i.server.hostname for i in instances], cap=settings.SSH_MAX_PER_SERVER
    )
    return seconds


def where_time_went(jobs) -> str:
    """Queue wait, job time, each step's median, and what is left of a job's time outside
    its steps (claim, lock, loading, the end's writes)."""
    waits = [(j.started_at - j.created_at).total_seconds() for j in jobs]
    handed = [(j.sent_at - j.created_at).total_seconds() for j in jobs if j.sent_at]
    taken = [(j.started_at - j.sent_at).total_seconds() for j in jobs if j.sent_at]
    runs = {j.pk: (j.finished_at - j.started_at).total_seconds() for j in jobs}
    steps = list(JobStep.objects.filter(job__in=jobs))
    by_name: dict[str, list[float]] = {}
    in_steps = dict.fromkeys(runs, 0.0)
    for step in steps:
        by_name.setdefault(step.name.split(" (")[0], []).append(step.duration or 0)
        in_steps[step.job_id] += step.duration or 0
    each = "; ".join(
        f"{name} median {statistics.median(d):.2f} s" for name, d in sorted(by_name.items())
    )
    outside = [runs[pk] - in_steps[pk] for pk in runs]
    return (
        f"queue wait median {statistics.median(waits):.2f} s max {max(waits):.2f} s (handed "
        f"to the broker by max {max(handed):.2f} s, then claimed within max {max(taken):.2f} "
        f"s); job median {statistics.median(runs.values()):.2f} s max {max(runs.values()):.2f} s; "
        f"{each}; outside its steps median {statistics.median(outside):.2f} s; "
        f"ran on: {by_controller(jobs)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    require_worker()
    servers = scale_inventory()
    instances = chosen(servers, args.count)
    per_server = max(
        sum(1 for i in instances if i.server_id == s.pk) for s in {i.server for i in instances}
    )
    print(
        f"{len(instances)} instances on {len({i.server_id for i in instances})} servers "
        f"(at most {per_server} on one); worker concurrency {settings.WORKER_CONCURRENCY}, "
        f"SSH_MAX_PER_SERVER {settings.SSH_MAX_PER_SERVER}",
        flush=True,
    )
    through_elephaas(instances[:1])  # warm the worker's connections and code paths
    elephaas, hand, warm = [], [], []
    with masters({i.server for i in instances}) as master:
        for number in range(1, args.rounds + 1):
            cpu = controllers_cpu()
            seconds, jobs, written, sessions = through_elephaas(instances)
            cpu = controllers_cpu() - cpu
            elephaas.append(seconds)
            hand.append(by_hand(instances))
            warm.append(by_hand(instances, master))
            print(
                f"round {number}: ElepHaaS {elephaas[-1]:.2f} s, by hand {hand[-1]:.2f} s "
                f"(new SSH connections), {warm[-1]:.2f} s (connections open); load average "
                f"{os.getloadavg()[0]:.1f}",
                flush=True,
            )
            print(f"  {where_time_went(jobs)}", flush=True)
            steps = JobStep.objects.filter(job__in=jobs).count()
            print(
                f"  metadata database: {written / len(jobs):.1f} rows written per job "
                f"({steps / len(jobs):.1f} steps each), at most {sessions} sessions at once; "
                f"the controllers' CPU: {cpu:.1f} s ({cpu / len(jobs) * 1000:.0f} ms a job)",
                flush=True,
            )
    median = statistics.median(elephaas)
    ratio = median / statistics.median(warm)
    print()
    print(f"restart {len(instances)} through the workers:     median {median:6.2f} s")
    print(f"by hand, in parallel, new SSH connections: median {statistics.median(hand):6.2f} s")
    print(f"by hand, in parallel, connections open:    median {statistics.median(warm):6.2f} s")
    print(f"ratio ElepHaaS / by hand (new connections):  {median / statistics.median(hand):.2f}x")
    print(f"ratio ElepHaaS / by hand (connections open): {ratio:.2f}x  (goal <= {GOAL_RATIO:g}x)")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        sys.exit(main())
