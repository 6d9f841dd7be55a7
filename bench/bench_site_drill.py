"""Site drill: move N herds (N = 1, 3, 6) to their DR copies on srv4 and back, each as one
campaign, under a write load on every herd, through the lab's real worker and BIND.

Each herd (primary on srv1..3, a replica on another of them, its DR copy on srv4) has a
client committing one row per transaction (100 per second unless --rate says) over a
libpq multi-host connection string (every member, target_session_attrs=read-write): it
follows the switchover without any DNS change, reconnecting as soon as the new primary
takes writes. Printed:
- the client-observed write gap per herd (longest time between two acknowledged commits),
  median and max, for the move and for the failback;
- each campaign's wall time (confirmed -> every herd's job ended), and N=6 / N=1
  (goal <= 2x: herds move in parallel, concurrency N, no canary);
- acknowledged commits missing on the primary afterwards (goal 0).

    python -m lab up --servers 4 && .venv/bin/python bench/bench_site_drill.py
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

from _drill import Client, print_steps, run_campaign  # noqa: E402

from herds import site_drill  # noqa: E402
from herds.models import DRCandidate, Environment, Herd  # noqa: E402
from instances.choices import CampaignKind  # noqa: E402
from instances.jobs import queue, runner  # noqa: E402
from instances.models import Campaign, Instance, JobKind, Server  # noqa: E402
from lab import herd as lab_herd  # noqa: E402
from lab import state  # noqa: E402

# name, port, primary server, prod replica server; every herd's DR copy is on srv4
HERDS = [(f"sd{i}", 5820 + i, (i - 1) % 3 + 1, i % 3 + 1) for i in range(1, 7)]
DR = 4


def build() -> list[Herd]:
    servers = {s.number: s for s in state.servers()}
    if DR not in servers:
        sys.exit("bench: the site drill needs 4 lab servers (python -m lab up --servers 4)")
    prod, _ = Environment.objects.get_or_create(name="bench")
    dr, _ = Environment.objects.get_or_create(name="bench-dr")
    rows = []
    for number in (1, 2, 3, DR):
        lab = servers[number]
        rows.append(
            Server.objects.filter(hostname=lab.hostname).first()
            or Server.objects.create(
                environment=dr if number == DR else prod, **lab.inventory_fields()
            )
        )
    for name, port, primary, replica in HERDS:
        lab_herd.create(name, primary, [replica, DR], port)
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, rows, queue=False))
    herds = list(Herd.objects.filter(name__in=[h for h, *_ in HERDS]).order_by("name"))
    for herd in herds:
        copy = Instance.objects.get(herd=herd, server__hostname=servers[DR].hostname)
        DRCandidate.objects.get_or_create(herd=herd, instance=copy)
    return herds


STEPS = False


def drill(herds: list[Herd], first: int, rate: float) -> dict:
    clients = [Client(h, first, rate) for h in herds]
    for client in clients:
        client.start()
    time.sleep(1)
    mark = time.monotonic()
    move = run_campaign(CampaignKind.SITE_SWITCHOVER, herds, {})
    move_gaps = [c.gap(mark) for c in clients]
    if STEPS:
        print_steps(move)
    time.sleep(0.5)
    mark = time.monotonic()
    back = run_campaign(
        CampaignKind.FAILBACK, herds, site_drill.failback_targets(move), reverse_of=move
    )
    back_gaps = [c.gap(mark) for c in clients]
    time.sleep(0.5)
    for client in clients:
        client.halt.set()
        client.join(timeout=30)
    return {
        "move": move.wall,
        "back": back.wall,
        "move_gaps": move_gaps,
        "back_gaps": back_gaps,
        "acked": sum(len(c.acked) for c in clients),
        "lost": sum(c.lost() for c in clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,3,6")
    parser.add_argument("--steps", action="store_true", help="print where the time went")
    parser.add_argument(
        "--rate",
        type=float,
        default=100,
        help="commits per second per herd's client (0: as fast as it can, which on a "
        "2-core lab measures the machine more than the drill)",
    )
    args = parser.parse_args()
    global STEPS
    STEPS = args.steps
    sizes = [int(n) for n in args.sizes.split(",")]
    print(
        f"write load: one client per herd, one row per transaction, "
        f"{f'{args.rate:g} commits/s each' if args.rate else 'as fast as it can'}"
    )
    herds = build()
    results = {}
    try:
        for round_number, n in enumerate(sizes):
            r = drill(herds[:n], first=1 + round_number * 10_000_000, rate=args.rate)
            results[n] = r
            gaps = r["move_gaps"] + r["back_gaps"]
            print(
                f"N={n}: move {r['move']:.2f} s, fail back {r['back']:.2f} s; write gap per "
                f"herd median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s; "
                f"commits acknowledged {r['acked']}, lost {r['lost']}",
                flush=True,
            )
    finally:
        names = [h for h, *_ in HERDS]
        Campaign.objects.filter(jobs__herd__name__in=names).update(reverse_of=None)
        campaigns = list(Campaign.objects.filter(jobs__herd__name__in=names).distinct())
        from instances.models import Job

        Job.objects.filter(campaign__in=campaigns).update(campaign=None)
        for campaign in campaigns:
            campaign.delete()
        for name in names:
            lab_herd.drop(name)
    lost = sum(r["lost"] for r in results.values())
    print(f"acknowledged commits lost over every drill: {lost} (goal 0)")
    ok = lost == 0
    if 1 in results and 6 in results:
        one = results[1]["move"] + results[1]["back"]
        six = results[6]["move"] + results[6]["back"]
        ratio = six / one
        print(
            f"campaign wall time, move + fail back: N=1 {one:.2f} s, N=6 {six:.2f} s; "
            f"ratio N=6/N=1 {ratio:.2f}x (goal <= 2x)"
        )
        ok = ok and ratio <= 2
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        main()
