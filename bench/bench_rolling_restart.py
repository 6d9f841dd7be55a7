"""Rolling restart of 3 herds (a primary and 2 replicas each) with a restart-level change
pending everywhere, under a write load, through the lab's real worker — against the same
steps run by hand, herd after herd: each replica restarted and waited for until it
streams, then a switchover (clean stop, the target replays the final checkpoint, promote,
the other replica repointed, the old primary started as a standby of the new one).

Each herd's client commits one row per transaction (100/s) over a libpq multi-host
string. Printed: wall time of each, the ratio, the longest write gap per herd, the
acknowledged commits lost (goal 0), and that nothing is pending a restart afterwards.

    python -m lab up --servers 4 && .venv/bin/python bench/bench_rolling_restart.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

import psycopg2  # noqa: E402
from bench_site_drill import Client  # noqa: E402

from herds.models import Environment, Herd  # noqa: E402
from instances import probe  # noqa: E402
from instances.choices import CampaignKind, CampaignState  # noqa: E402
from instances.inventory import herd_instances, recorded_primary  # noqa: E402
from instances.jobs import campaigns, queue, runner  # noqa: E402
from instances.models import Campaign, Job, JobKind, Server  # noqa: E402
from lab import fleet, state  # noqa: E402
from lab import herd as lab_herd  # noqa: E402

HERDS = [(f"rr{i}", 5830 + i, i) for i in (1, 2, 3)]  # name, port, primary server
VERSION = fleet.pg_version()


def sql(host: str, port: int, text: str):
    conn = psycopg2.connect(
        host=host,
        port=port,
        dbname="postgres",
        user="elephaas",
        password=state.secret("pg_password"),
        connect_timeout=2,
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(text)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def until(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except psycopg2.Error:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.02)


def build() -> list[Herd]:
    servers = {s.number: s for s in state.servers()}
    env, _ = Environment.objects.get_or_create(name="bench")
    rows = [
        Server.objects.filter(hostname=servers[n].hostname).first()
        or Server.objects.create(environment=env, **servers[n].inventory_fields())
        for n in (1, 2, 3)
    ]
    for name, port, primary in HERDS:
        lab_herd.create(name, primary, [n for n in (1, 2, 3) if n != primary], port)
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, rows, queue=False))
    return list(Herd.objects.filter(name__in=[h for h, *_ in HERDS]).order_by("name"))


def members(herd: Herd) -> tuple[str, list[str]]:
    instances = herd_instances(herd.pk)
    primary = recorded_primary(instances)
    return primary.server.hostname, [i.server.hostname for i in instances if i.pk != primary.pk]


def make_pending(herd: Herd, value: int) -> None:
    primary, replicas = members(herd)
    for host in [primary, *replicas]:
        sql(host, herd.port, f"ALTER SYSTEM SET max_connections = {value}")
        sql(host, herd.port, "SELECT pg_reload_conf()")


def pending(herd: Herd) -> list[str]:
    primary, replicas = members(herd)
    return [
        f"{h}: {','.join(names)}"
        for h in [primary, *replicas]
        if (names := probe.pending_restart(h, herd.port))
    ]


def number(host: str) -> int:
    return int(host.rsplit(".", 1)[1])


def streaming(host: str, port: int, upstream: str) -> bool:
    row = sql(host, port, "SELECT status, sender_host FROM pg_stat_wal_receiver")
    return bool(row) and row[0] == "streaming" and row[1] == upstream


def by_hand(herd: Herd) -> None:
    """What a DBA types for one herd, in order, waiting where they would wait."""
    primary, replicas = members(herd)
    port, name = herd.port, herd.name
    for host in replicas:
        fleet.server_ns(number(host)).run(["pg_ctlcluster", VERSION, name, "restart", "-m", "fast"])
        until(lambda host=host: streaming(host, port, primary), f"{host} streaming again")
    target, other = replicas[0], replicas[1:]
    conninfo = sql(target, port, "SHOW primary_conninfo")[0]
    ns = fleet.server_ns(number(primary))
    ns.run(["pg_ctlcluster", VERSION, name, "stop", "-m", "fast"])
    control = ns.run(
        [
            f"/usr/lib/postgresql/{VERSION}/bin/pg_controldata",
            f"/var/lib/postgresql/{VERSION}/{name}",
        ],
        user="postgres",
    )
    text = control.stdout
    checkpoint = next(
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Latest checkpoint location")
    )
    until(
        lambda: sql(target, port, f"SELECT pg_last_wal_replay_lsn() >= '{checkpoint}'")[0],
        f"{target} replayed the final checkpoint",
    )
    fleet.server_ns(number(target)).run(["pg_ctlcluster", VERSION, name, "promote"])
    until(lambda: not sql(target, port, "SELECT pg_is_in_recovery()")[0], f"{target} promoted")
    new = conninfo.replace(f"host={primary}", f"host={target}")
    for host in other:
        sql(host, port, f"ALTER SYSTEM SET primary_conninfo = '{new}'")
        sql(host, port, "SELECT pg_reload_conf()")
    data = ns.folder / "lib" / VERSION / name
    (data / "standby.signal").touch()
    os.chown(data / "standby.signal", *_owner(data))
    with open(data / "postgresql.auto.conf", "a") as auto:
        auto.write(f"primary_conninfo = '{new}'\n")
    ns.run(["pg_ctlcluster", VERSION, name, "start"])
    for host in [*other, primary]:
        until(lambda host=host: streaming(host, port, target), f"{host} streaming from {target}")


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def run_tool(herds: list[Herd]) -> float:
    started = time.monotonic()
    campaign = campaigns.create(
        CampaignKind.ROLLING_RESTART,
        "bench: rolling restart",
        [campaigns.Entry(JobKind.ROLLING_RESTART, h, {"mode": "switchover"}) for h in herds],
        concurrency=len(herds),
        canary=False,
    )
    while True:
        campaign.refresh_from_db()
        if campaign.finished_at or campaign.state == CampaignState.HALTED:
            break
        if time.monotonic() - started > 600:
            sys.exit("bench: the rolling restart campaign ran past 600 s")
        time.sleep(0.05)
    if campaign.state != CampaignState.SUCCEEDED:
        errors = [j.error for j in Job.objects.filter(campaign=campaign) if j.error]
        sys.exit(f"bench: campaign {campaign.state}: {errors}")
    return time.monotonic() - started


def measured(herds: list[Herd], first: int, work) -> tuple[float, list[float], int]:
    clients = [Client(h, first, 100) for h in herds]
    for client in clients:
        client.start()
    time.sleep(1)
    mark = time.monotonic()
    elapsed = work()
    time.sleep(0.5)
    for client in clients:
        client.halt.set()
        client.join(timeout=30)
    return elapsed, [c.gap(mark) for c in clients], sum(c.lost() for c in clients)


def main() -> None:
    herds = build()
    try:
        for herd in herds:
            make_pending(herd, 110)
        tool, tool_gaps, tool_lost = measured(herds, 1, lambda: run_tool(herds))
        left = [p for h in herds for p in pending(h)]
        print(
            f"ElepHaaS (one campaign, {len(herds)} herds at once): {tool:.2f} s; longest write "
            f"gap per herd {', '.join(f'{g:.2f}' for g in tool_gaps)} s; lost {tool_lost}; "
            f"pending afterwards: {left or 'none'}",
            flush=True,
        )
        for herd in herds:
            make_pending(herd, 120)

        def hand() -> float:
            started = time.monotonic()
            for herd in herds:
                by_hand(herd)
            return time.monotonic() - started

        floor, hand_gaps, hand_lost = measured(herds, 10_000_000, hand)
        left_hand = [p for h in herds for p in pending(h)]
        print(
            f"by hand (the same steps, herd after herd): {floor:.2f} s; longest write gap per "
            f"herd {', '.join(f'{g:.2f}' for g in hand_gaps)} s; lost {hand_lost}; pending "
            f"afterwards: {left_hand or 'none'}"
        )
    finally:
        names = [h for h, *_ in HERDS]
        ids = list(
            Campaign.objects.filter(jobs__herd__name__in=names)
            .distinct()
            .values_list("pk", flat=True)
        )
        Job.objects.filter(campaign_id__in=ids).update(campaign=None)
        Campaign.objects.filter(pk__in=ids).delete()
        for name in names:
            lab_herd.drop(name)
    print(f"ratio ElepHaaS / by hand: {tool / floor:.2f}x (goal <= 1)")
    print(f"acknowledged commits lost: {tool_lost} (goal 0)")
    sys.exit(0 if tool_lost == 0 and not left and tool <= floor else 1)


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        main()
