"""What the campaign benchmarks share (bench_site_drill, bench_scale_campaign): a write
client per herd over its libpq multi-host string, running a site-drill campaign to its
end, and where its switchovers' time went."""

from __future__ import annotations

import statistics
import sys
import threading
import time

import psycopg2

from herds import site_drill
from herds.models import Herd
from instances.choices import CampaignState
from instances.inventory import herd_instances, recorded_primary
from instances.models import Campaign
from lab import state


class Client(threading.Thread):
    """One row per transaction until stopped; reconnects through the multi-host string."""

    def __init__(self, herd: Herd, first: int, rate: float):
        super().__init__(daemon=True)
        self.pause = 1 / rate if rate else 0.0
        hosts = ",".join(i.server.hostname for i in herd_instances(herd.pk))
        self.dsn = (
            f"host={hosts} port={herd.port} dbname=postgres user=elephaas "
            f"password={state.secret('pg_password')} target_session_attrs=read-write "
            "connect_timeout=1"
        )
        self.herd = herd
        self.value = first
        self.acked: list[int] = []
        self.times: list[float] = []
        self.halt = threading.Event()
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS drill_rows (v bigint PRIMARY KEY)")
        conn.close()

    def run(self) -> None:
        conn = None
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO drill_rows VALUES (%s)", [self.value])
                self.acked.append(self.value)
                self.times.append(time.monotonic())
                self.value += 1
                if self.pause:
                    time.sleep(self.pause)
            except psycopg2.Error:
                try:
                    if conn is not None:
                        conn.close()
                except psycopg2.Error:
                    pass
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def gap(self, since: float) -> float:
        moments = [t for t in self.times if t >= since]
        return max((b - a for a, b in zip(moments, moments[1:], strict=False)), default=0.0)

    def drop_table(self) -> None:
        """Leave the herd as found (the scale lab's herds outlive the benchmark)."""
        primary = recorded_primary(herd_instances(self.herd.pk))
        conn = psycopg2.connect(
            host=primary.server.hostname,
            port=primary.port,
            dbname="postgres",
            user="elephaas",
            password=state.secret("pg_password"),
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS drill_rows")
        conn.close()

    def lost(self) -> int:
        primary = recorded_primary(herd_instances(self.herd.pk))
        conn = psycopg2.connect(
            host=primary.server.hostname,
            port=primary.port,
            dbname="postgres",
            user="elephaas",
            password=state.secret("pg_password"),
        )
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM drill_rows WHERE v = ANY(%s)", [self.acked])
            found = cur.fetchone()[0]
        conn.close()
        return len(self.acked) - found


def run_campaign(
    kind: str, herds: list[Herd], targets: dict, reverse_of=None, concurrency: int | None = None
) -> Campaign:
    """Check the gates, start the campaign (no canary; every herd at once unless
    `concurrency` says), wait for its end; exit unless it succeeded. `campaign.wall` is
    its wall time from start to end."""
    checks = site_drill.check(herds, targets)
    failing = [
        (c.herd.name, [g.detail for g in c.failed_gates] or c.plan.sentence)
        for c in checks
        if not c.ok
    ]
    if failing:
        sys.exit(f"bench: gates failed: {failing}")
    started = time.monotonic()
    campaign = site_drill.start(
        kind,
        checks,
        user=None,
        concurrency=concurrency or len(herds),
        canary=False,
        reverse_of=reverse_of,
    )
    while True:
        campaign.refresh_from_db()
        if campaign.finished_at or campaign.state == CampaignState.HALTED:
            break
        if time.monotonic() - started > 600:
            sys.exit(f"bench: campaign #{campaign.pk} still {campaign.state} after 600 s")
        time.sleep(0.05)
    campaign.wall = time.monotonic() - started
    if campaign.state != CampaignState.SUCCEEDED:
        sys.exit(f"bench: campaign #{campaign.pk} {campaign.state}: {campaign.state_note}")
    return campaign


def print_steps(campaign: Campaign) -> None:
    """Where the time of a campaign's switchovers went: each step's median and max."""
    from collections import defaultdict

    from instances.models import JobStep

    seconds = defaultdict(list)
    for step in JobStep.objects.filter(job__campaign=campaign):
        name = step.name.split(" ")[0] if " on " in step.name else step.name
        seconds[name].append(step.duration or 0)
    for name, values in sorted(seconds.items(), key=lambda kv: -max(kv[1])):
        print(
            f"    {name[:60]:60} median {statistics.median(values):.3f} s max {max(values):.3f} s"
        )
