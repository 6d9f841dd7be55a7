"""Switchover under a steady pgbench write load, through the lab's real worker and BIND.

For one herd (primary + 2 replicas), several switchovers back and forth while pgbench
writes: RTO (queued -> new primary accepted a write), DNS answer changed, replicas
streaming again (job done), and committed transactions counted on both sides (pgbench's
acknowledged count vs pgbench_history rows on the new primary). Then 6 herds switched
over at once vs 1. Goals: median RTO <= 5 s with 0 lost commits; 6 herds <= 2x one.

    python -m lab up && .venv/bin/python bench/bench_switchover.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

import psycopg2  # noqa: E402

from herds import dns, snapshot  # noqa: E402
from herds.models import Drill, Environment, Herd  # noqa: E402
from instances.inventory import herd_instances, recorded_primary  # noqa: E402
from instances.jobs import queue, runner  # noqa: E402
from instances.models import Instance, Job, JobKind, JobState, Server  # noqa: E402
from lab import fleet, state  # noqa: E402
from lab import herd as lab_herd  # noqa: E402

PGBIN = Path(f"/usr/lib/postgresql/{fleet.pg_version()}/bin")
HERDS = [(f"sw{i}", 5800 + i, (i - 1) % 3 + 1) for i in range(1, 7)]  # name, port, primary


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PGPASSFILE": str(state.SECRETS_DIR / "pgpass"),
        "PGUSER": "elephaas",
        "PGDATABASE": "postgres",
        "PGCONNECT_TIMEOUT": "3",
    }


def build() -> list[Herd]:
    servers = {s.number: s for s in state.servers()}
    envrow, _ = Environment.objects.get_or_create(name="bench")
    rows = []
    for number in (1, 2, 3):
        lab = servers[number]
        rows.append(
            Server.objects.filter(hostname=lab.hostname).first()
            or Server.objects.create(environment=envrow, **lab.inventory_fields())
        )
    for name, port, primary in HERDS:
        lab_herd.create(name, primary, [n for n in (1, 2, 3) if n != primary], port)
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, rows, queue=False))
    herds = list(Herd.objects.filter(name__in=[h for h, _, _ in HERDS]).order_by("name"))
    for herd in herds:
        herd.vhost = f"{herd.name}-{secrets.token_hex(2)}"
        herd.save()
    return herds


def switch(herds: list[Herd]) -> tuple[float, list[Job]]:
    params = {h.pk: snapshot.expected_primary(h) for h in herds}
    started = time.monotonic()
    created = queue.create_jobs(JobKind.SWITCHOVER, herds, params_for=lambda h: params[h.pk])
    ids = [j.pk for j in created]
    while Job.objects.filter(pk__in=ids).exclude(state__in=JobState.terminal()).exists():
        if time.monotonic() - started > 600:
            sys.exit("bench: switchover jobs still running after 600 s")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    done = list(Job.objects.filter(pk__in=ids))
    bad = [j for j in done if j.state != JobState.SUCCEEDED]
    if bad:
        sys.exit("bench: " + "; ".join(f"#{j.pk} {j.error}" for j in bad))
    return elapsed, done


def one_round(herd: Herd) -> dict:
    primary = recorded_primary(herd_instances(herd.pk))
    host, port = primary.server.hostname, primary.port
    load = subprocess.Popen(
        [str(PGBIN / "pgbench"), "-h", host, "-p", str(port), "-c", "4", "-T", "60", "-n"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(2)
    queued = time.monotonic()
    before = dns.lookup(herd.vhost)
    params = {"expected_primary_id": primary.pk}
    [job] = queue.create_jobs(JobKind.SWITCHOVER, [herd], params=params)
    dns_changed = None
    while True:
        job.refresh_from_db()
        if dns_changed is None and dns.lookup(herd.vhost) != before:
            dns_changed = time.monotonic() - queued
        if job.state in JobState.terminal():
            break
        time.sleep(0.02)
    done = time.monotonic() - queued
    output, _ = load.communicate(timeout=120)
    if job.state != JobState.SUCCEEDED:
        sys.exit(f"bench: switchover failed: {job.error}")
    drill = Drill.objects.get(job=job)
    acked = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
    new = Instance.objects.select_related("server").get(herd=herd, role="primary")
    conn = psycopg2.connect(
        host=new.server.hostname,
        port=new.port,
        dbname="postgres",
        user="elephaas",
        password=state.secret("pg_password"),
    )
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgbench_history")
        stored = cur.fetchone()[0]
    conn.close()
    return {
        "rto": (drill.writable_at - job.created_at).total_seconds(),
        "dns": dns_changed if dns_changed is not None else float("nan"),
        "streaming": done,
        "acked": acked,
        "stored": stored,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    herds = build()
    try:
        first = herds[0]
        primary = recorded_primary(herd_instances(first.pk))
        subprocess.run(
            [
                str(PGBIN / "pgbench"),
                "-i",
                "-q",
                "-s",
                "2",
                "-h",
                primary.server.hostname,
                "-p",
                str(primary.port),
            ],
            env=env(),
            check=True,
            capture_output=True,
        )
        results = []
        for _ in range(args.rounds):
            # pgbench_history grows across rounds: count what this round adds on both sides.
            conn = psycopg2.connect(
                host=recorded_primary(herd_instances(first.pk)).server.hostname,
                port=primary.port,
                dbname="postgres",
                user="elephaas",
                password=state.secret("pg_password"),
            )
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pgbench_history")
                base = cur.fetchone()[0]
            conn.close()
            r = one_round(first)
            r["stored"] -= base
            results.append(r)
            print(
                f"  round: RTO {r['rto']:.2f} s, DNS {r['dns']:.2f} s, replicas streaming "
                f"{r['streaming']:.2f} s, commits acknowledged {r['acked']}, on the new "
                f"primary {r['stored']}",
                flush=True,
            )
        single_times = [switch([first])[0] for _ in range(2)]
        six_times = [switch(herds)[0] for _ in range(2)]
    finally:
        if not args.keep:
            names = [h for h, _, _ in HERDS]
            Drill.objects.filter(herd__name__in=names).delete()
            Job.objects.filter(herd__name__in=names).delete()
            Job.objects.filter(instance__herd__name__in=names).delete()
            Instance.objects.filter(herd__name__in=names).delete()
            Herd.objects.filter(name__in=names).delete()
            for name in names:
                lab_herd.drop(name)
    rto = statistics.median(r["rto"] for r in results)
    lost = sum(max(0, r["acked"] - r["stored"]) for r in results)
    one, six = statistics.median(single_times), statistics.median(six_times)
    print(
        f"switchover RTO (queued -> new primary writable): median {rto:.2f} s over "
        f"{len(results)} rounds (goal <= 5 s)"
    )
    print(
        f"DNS answer changed: median {statistics.median(r['dns'] for r in results):.2f} s; "
        f"replicas streaming again: median "
        f"{statistics.median(r['streaming'] for r in results):.2f} s"
    )
    print(f"commits acknowledged to pgbench but missing on the new primary: {lost} (goal 0)")
    print(f"1 herd: {one:.2f} s; 6 herds at once: {six:.2f} s; ratio {six / one:.2f}x (goal <= 2x)")
    sys.exit(0 if rto <= 5 and lost == 0 and six / one <= 2 else 1)


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        main()
