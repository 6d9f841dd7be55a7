#!/usr/bin/env python3
"""A campaign switching 20 herds over to their DR copies and back, on the scale lab,
under a write load on every herd, through the lab's real worker.

    nice -n 19 python -m lab up --profile scale
    LAB_DIR=.lab-scale .venv/bin/python bench/bench_scale_campaign.py [--herds 20] [--rate 20]

1. The scale fleet in the inventory (servers added and discovered where missing); each of
   the first 20 herds gets its last replica acknowledged as its DR copy.
2. A client per herd commits one row per transaction (--rate per second) over the herd's
   libpq multi-host string (target_session_attrs=read-write), following each switchover.
3. One herd: "Move to DR site" as a campaign (the gates checked live), then "Fail back"
   from its record; then the 20 herds the same way, every herd at once (concurrency 20,
   no canary), then 20 at the default concurrency (ELEPHAAS_SITE_DRILL_CONCURRENCY).
4. Print each campaign's wall time, the client-observed write gap per herd, commits
   acknowledged and lost, and two ratios:
   - against the floor of the campaign machinery: the same jobs, with the durations they
     had, released in the campaign's order the moment a slot frees (`concurrency` at a
     time) and nothing between one's end and the next one's start; wall / that floor
     says what releasing, queueing and claiming cost;
   - 20 at once / 1 herd: how a campaign grows with its size on this machine.

Goals (ours: the issue sets none): no acknowledged commit lost; each campaign within 1.3x
its floor. Exit status 1 when missed.
"""

from __future__ import annotations

import argparse
import heapq
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

from _drill import Client, print_steps, run_campaign  # noqa: E402
from _scale import by_controller, require_worker, scale_inventory  # noqa: E402
from django.conf import settings  # noqa: E402

from herds import site_drill  # noqa: E402
from herds.models import DRCandidate, Herd  # noqa: E402
from instances.choices import CampaignKind, Role  # noqa: E402
from instances.models import Campaign, Instance, Job  # noqa: E402

GOAL_RATIO = 1.3


def floor(campaign: Campaign) -> float:
    """Its jobs' own durations scheduled with no gap: release order, `concurrency` at a
    time, each starting as soon as a slot frees."""
    durations = [
        (j.finished_at - j.started_at).total_seconds()
        for j in campaign.jobs.order_by("wave", "pk")
        if j.started_at and j.finished_at
    ]
    slots = [0.0] * min(campaign.concurrency, len(durations))
    for duration in durations:
        heapq.heappush(slots, heapq.heappop(slots) + duration)
    return max(slots)


def chosen(servers, count: int) -> list[Herd]:
    herds = list(
        Herd.objects.filter(instances__server__in=servers).distinct().order_by("port")[:count]
    )
    for herd in herds:
        replicas = Instance.objects.filter(herd=herd, role=Role.REPLICA).order_by(
            "-server__hostname"
        )
        if not DRCandidate.objects.filter(herd=herd).exists():
            DRCandidate.objects.create(herd=herd, instance=replicas.first(), note="bench")
    return herds


def drill(herds: list[Herd], first: int, rate: float, concurrency: int, steps: bool) -> dict:
    clients = [Client(h, first, rate) for h in herds]
    for client in clients:
        client.start()
    time.sleep(1)
    mark = time.monotonic()
    move = run_campaign(CampaignKind.SITE_SWITCHOVER, herds, {}, concurrency=concurrency)
    move_gaps = [c.gap(mark) for c in clients]
    if steps:
        print_steps(move)
    time.sleep(0.5)
    mark = time.monotonic()
    back = run_campaign(
        CampaignKind.FAILBACK,
        herds,
        site_drill.failback_targets(move),
        reverse_of=move,
        concurrency=concurrency,
    )
    back_gaps = [c.gap(mark) for c in clients]
    time.sleep(0.5)
    for client in clients:
        client.halt.set()
        client.join(timeout=30)
    print(f"  ran on: {by_controller(Job.objects.filter(campaign__in=[move, back]))}", flush=True)
    result = {
        "move": move.wall,
        "back": back.wall,
        "floor": floor(move) + floor(back),
        "gaps": move_gaps + back_gaps,
        "acked": sum(len(c.acked) for c in clients),
        "lost": sum(c.lost() for c in clients),
    }
    for client in clients:
        client.drop_table()
    return result


def forget(campaigns: list[Campaign]) -> None:
    """The campaigns this run made, and their jobs' link to them: their herds stay in the
    inventory (the scale lab's fleet), so as_found() keeps the jobs as audit trail."""
    Campaign.objects.filter(pk__in=[c.pk for c in campaigns]).update(reverse_of=None)
    Job.objects.filter(campaign__in=campaigns).update(campaign=None)
    for campaign in campaigns:
        campaign.delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--herds", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20, help="commits/s per herd's client")
    parser.add_argument("--steps", action="store_true", help="print where the time went")
    args = parser.parse_args()
    require_worker()
    servers = scale_inventory()
    herds = chosen(servers, args.herds)
    before = set(Campaign.objects.values_list("pk", flat=True))
    print(
        f"{len(herds)} herds ({sum(h.instances.count() for h in herds)} instances); write "
        f"load {args.rate:g} commits/s per herd; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    default = settings.SITE_DRILL_CONCURRENCY
    results = {}
    try:
        for label, group, concurrency, first in (
            ("1 herd", herds[:1], 1, 1),
            (f"{len(herds)} herds at once", herds, len(herds), 10_000_000),
            (f"{len(herds)} herds, {default} at a time", herds, default, 20_000_000),
        ):
            r = drill(group, first, args.rate, concurrency, args.steps)
            results[label] = r
            print(
                f"{label}: move {r['move']:.2f} s, fail back {r['back']:.2f} s; write gap "
                f"per herd median {statistics.median(r['gaps']):.2f} s, max "
                f"{max(r['gaps']):.2f} s; commits acknowledged {r['acked']}, lost {r['lost']}",
                flush=True,
            )
    finally:
        forget(list(Campaign.objects.exclude(pk__in=before)))
        DRCandidate.objects.filter(herd__in=herds, note="bench").delete()
    one = results["1 herd"]
    many = results[f"{len(herds)} herds at once"]
    lost = sum(r["lost"] for r in results.values())
    print()
    worst = 0.0
    for label, r in results.items():
        wall = r["move"] + r["back"]
        worst = max(worst, wall / r["floor"])
        print(
            f"{label:<28} move + fail back {wall:7.2f} s; floor {r['floor']:7.2f} s; "
            f"wall / floor {wall / r['floor']:.2f}x"
        )
    growth = (many["move"] + many["back"]) / (one["move"] + one["back"])
    print(f"{len(herds)} at once / 1 herd: {growth:.2f}x")
    print(f"worst wall / floor: {worst:.2f}x (goal <= {GOAL_RATIO:g}x)")
    print(f"acknowledged commits lost: {lost} (goal 0); load average {os.getloadavg()[0]:.1f}")
    print(
        f"worker concurrency {settings.WORKER_CONCURRENCY}, SSH_MAX_PER_SERVER "
        f"{settings.SSH_MAX_PER_SERVER}"
    )
    return 0 if lost == 0 and worst <= GOAL_RATIO else 1


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        sys.exit(main())
