#!/usr/bin/env python3
"""Admin list, filter and search pages at 200 and at 10,000 instances: time per page and
SQL queries.

Run: .venv/bin/python bench/bench_admin_list.py [--repeat N]   (any lab's metadata database)

1. Create a scratch database (elephaas_bench) on the metadata server, through Django's
   test-database machinery, and migrate it.
2. Bulk-create a fleet the size of the scale lab: 200 instances (40 servers, 40 herds of
   5).
3. Fetch each admin page (the list pages; the instance list filtered by environment, by
   role and state, by replication health; searches by herd and by server name, and one
   that matches every row) with the test Client as a superuser, a few times; record the
   median time and the number of SQL queries of one fetch.
4. Replace the fleet by a large one: 10,000 instances (1,000 servers, 2,000 herds) and
   measure again.
5. Print the figures and the large/small ratios, and drop the scratch database.

Goal (DESIGN, "For this project"): every page costs the same number of queries for any
fleet size, and the instance list takes at most twice as long at 10,000 instances.
Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

BENCH_DATABASE = "elephaas_bench"
PER_HERD = 5  # one primary, four replicas
SIZES = (
    # label, environments, servers, herds  (instances = herds * PER_HERD)
    ("small", 4, 40, 40),
    ("large", 10, 1_000, 2_000),
)
PAGES = (
    # label, URL name, query string
    ("instances", "admin:instances_instance_changelist", ""),
    ("herds", "admin:herds_herd_changelist", ""),
    ("servers", "admin:instances_server_changelist", ""),
    ("DR pairs", "admin:herds_drpair_changelist", ""),
    ("inst. env", "admin:instances_instance_changelist", "herd__environment__id__exact=1"),
    ("inst. role", "admin:instances_instance_changelist", "role__exact=replica&online__exact=1"),
    ("inst. repl", "admin:instances_instance_changelist", "replication=unknown"),
    ("inst. ?herd", "admin:instances_instance_changelist", "q=herd0012"),
    ("inst. ?host", "admin:instances_instance_changelist", "q=db0007.bench"),
    ("inst. ?all", "admin:instances_instance_changelist", "q=bench.test"),
    ("herds ?name", "admin:herds_herd_changelist", "q=herd001"),
    ("servers env", "admin:instances_server_changelist", "environment__id__exact=1"),
)
GOAL_PAGE = "instances"
GOAL_TIME_RATIO = 2.0


@dataclass
class Measurement:
    page: str
    size: str
    instances: int
    median_ms: float
    queries: int
    rows: int


def populate(environments: int, servers: int, herds: int) -> int:
    """Bulk-create a fleet; return the number of instances."""
    from django.utils import timezone

    from herds.models import DRCandidate, Environment, Herd
    from instances.models import Instance, Role, Server

    now = timezone.now()
    envs = Environment.objects.bulk_create(
        Environment(name=f"env{number:02d}") for number in range(environments)
    )
    server_rows = Server.objects.bulk_create(
        Server(
            hostname=f"db{number:04d}.bench.test",
            environment=envs[number % environments],
            ssh_port=22,
            ssh_user="postgres",
            last_contact=now,
        )
        for number in range(servers)
    )
    # Herd i puts its instances on servers PER_HERD*i .. PER_HERD*i+4 (mod servers), so
    # herds that share a server are `block` apart and get distinct ports.
    block = servers // PER_HERD
    herd_rows = Herd.objects.bulk_create(
        Herd(
            name=f"herd{number:04d}",
            cluster_name=f"herd{number:04d}",
            environment=envs[number % environments],
            port=5432 + number // block,
            pg_version=15 + number % 3,
            vhost=f"herd{number:04d}.bench.test",
        )
        for number in range(herds)
    )

    def instance(herd_number: int, slot: int, **fields) -> Instance:
        herd = herd_rows[herd_number]
        return Instance(
            herd=herd,
            server=server_rows[(PER_HERD * herd_number + slot) % servers],
            port=herd.port,
            pg_version=herd.pg_version,
            last_checked=now,
            **fields,
        )

    primaries = Instance.objects.bulk_create(
        instance(number, 0, role=Role.PRIMARY, online=True, last_lsn="0/5A000000")
        for number in range(herds)
    )
    onlines = (True, True, False, None)
    replicas = Instance.objects.bulk_create(
        instance(
            number,
            slot,
            role=Role.REPLICA,
            upstream=primaries[number],
            online=onlines[slot - 1],
            last_lsn="0/59FFE000",
            lag_bytes=8192 * slot,
            lag_seconds=0.5 * slot,
        )
        for number in range(herds)
        for slot in range(1, PER_HERD)
    )
    DRCandidate.objects.bulk_create(
        DRCandidate(herd=replica.herd, instance=replica, priority=1, acknowledged_at=now)
        for replica in replicas[:: PER_HERD - 1]
    )
    return len(primaries) + len(replicas)


def clear_fleet() -> None:
    from django.db import connection

    # CASCADE: jobs, their steps, drills and health rows reference these tables; this is the
    # scratch database (BENCH_DATABASE), never the inventory, so whatever references the
    # fleet goes with it.
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE herds_drcandidate, instances_instance, instances_server, herds_herd, "
            "herds_environment RESTART IDENTITY CASCADE"
        )


def analyze() -> None:
    """Fresh planner statistics, as autovacuum would have after a real fleet grew."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure(client, url: str, repeat: int) -> tuple[float, int, int]:
    """(median ms, queries of one fetch, rows on the page)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(2):  # warm templates, caches, the connection
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    rows = len(response.context["cl"].result_list)
    return statistics.median(timings), len(captured), rows


def run(repeat: int) -> int:
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    user = User.objects.create_superuser("bench", "bench@example.test", "bench-password")
    client = Client()
    client.force_login(user)

    results: list[Measurement] = []
    for label, environments, servers, herds in SIZES:
        clear_fleet()
        started = time.perf_counter()
        instances = populate(environments, servers, herds)
        analyze()
        print(
            f"{label}: {instances:,} instances, {servers:,} servers, {herds:,} herds "
            f"(created in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        for page, url_name, query in PAGES:
            url = reverse(url_name) + (f"?{query}" if query else "")
            median_ms, queries, rows = measure(client, url, repeat)
            results.append(Measurement(page, label, instances, median_ms, queries, rows))
            print(
                f"  {page:<12} {rows:>4} rows/page  {median_ms:8.1f} ms median  "
                f"{queries:>3} queries",
                flush=True,
            )

    print()
    print(f"{'page':<12} {'queries small → large':>22} {'query ratio':>12} {'time ratio':>11}")
    failed = False
    for page, *_ in PAGES:
        small, large = (m for m in results if m.page == page)
        time_ratio = large.median_ms / small.median_ms
        query_ratio = large.queries / small.queries
        # The small fleet has fewer herds and servers than fit on one page, so those pages
        # render fewer rows there: their time ratio includes that, not only fleet size.
        note = "" if small.rows == large.rows else f"  ({small.rows} vs {large.rows} rows shown)"
        print(
            f"{page:<12} {small.queries:>11} → {large.queries:<8} {query_ratio:>12.2f}"
            f" {time_ratio:>10.2f}x{note}"
        )
        if large.queries != small.queries:
            failed = True
        if page == GOAL_PAGE and time_ratio > GOAL_TIME_RATIO:
            failed = True
    print()
    print(
        f"goal: equal query counts on every page, {GOAL_PAGE} time ratio ≤ {GOAL_TIME_RATIO:g}: "
        + ("MISSED" if failed else "met")
    )
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed fetches per page")
    args = parser.parse_args()

    import django
    from django.conf import settings

    # Before setup: the test-database machinery then creates and drops this name, never
    # touching the real metadata database.
    settings.DATABASES["default"]["TEST"] = {"NAME": BENCH_DATABASE}
    django.setup()

    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    setup_test_environment()
    # create_test_db returns the scratch name; destroy_test_db wants the real one back.
    real_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        return run(args.repeat)
    finally:
        connection.creation.destroy_test_db(real_name, verbosity=0)
        teardown_test_environment()


if __name__ == "__main__":
    sys.exit(main())
