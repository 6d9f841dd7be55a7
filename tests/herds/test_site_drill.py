"""Site drills on the lab, through the web admin and the real worker: three herds moved
to their DR copies on srv4 as one campaign under a write load, then failed back; a
campaign halted by a herd whose target fell behind after the confirmation."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import signal
import time

import psycopg2
import pytest

from herds import dns, site_drill
from herds.models import DRCandidate, Herd
from instances import probe
from instances.choices import CampaignKind, CampaignState
from instances.jobs import queue, runner
from instances.models import Campaign, Instance, Job, JobKind, JobState, Role
from lab import herd as lab_herd
from tests.factories import make_environment
from tests.helpers import add_lab_server
from tests.herds.drill_lab import Writer, connect, rows_on

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

# name: (port, primary server, replica servers); srv4 (environment dr) holds each DR copy
HERDS = {
    "sitea": (5541, 1, [2, 4]),
    "siteb": (5542, 2, [4]),
    "sitec": (5543, 3, [1, 4]),
}
DR = "127.0.1.4"


@pytest.fixture
def site(lab, lab_servers):
    for name, (port, primary, replicas) in HERDS.items():
        lab_herd.create(name, primary=primary, replicas=replicas, port=port)
    prod, dr = make_environment("prod"), make_environment("dr")
    servers = [add_lab_server(s, prod if s.number != 4 else dr) for s in lab_servers[:4]]
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers, queue=False))
    herds = {}
    for name in HERDS:
        herd = Herd.objects.get(name=name)
        herd.vhost = f"{name}-{secrets.token_hex(3)}"
        herd.ro_vhost = f"{herd.vhost}-ro"
        herd.save()
        copy = Instance.objects.get(herd=herd, server__hostname=DR)
        DRCandidate.objects.create(herd=herd, instance=copy, note="the test's DR copy")
        herds[name] = herd
    yield herds
    for name in HERDS:
        lab_herd.drop(name)
    for herd in herds.values():
        for name in (herd.vhost, herd.ro_vhost):
            try:
                dns.delete_name(name)
            except dns.DNSError:
                pass


def wait_campaign(campaign_id: int, timeout: float = 240) -> Campaign:
    deadline = time.monotonic() + timeout
    while True:
        campaign = Campaign.objects.get(pk=campaign_id)
        if campaign.finished_at or campaign.state == CampaignState.HALTED:
            return campaign
        assert time.monotonic() < deadline, (
            f"campaign still {campaign.state}: {campaign.state_note}"
        )
        time.sleep(0.2)


def start_writers(lab, hosts: dict[str, str], first: int = 1) -> dict[str, Writer]:
    writers = {}
    for name, host in hosts.items():
        writer = Writer(host, lab, HERDS[name][0], first)
        writer.start()
        writers[name] = writer
    time.sleep(0.5)
    return writers


def stop_writers(writers: dict[str, Writer]) -> None:
    for writer in writers.values():
        writer.stop.set()
        writer.join(timeout=30)


def assert_nothing_lost(lab, writers, new_hosts: dict[str, str]) -> None:
    for name, writer in writers.items():
        assert writer.acked, f"{name}: the writer committed nothing"
        found = rows_on(new_hosts[name], lab, writer.acked, HERDS[name][0])
        assert found == len(writer.acked), f"{name}: {len(writer.acked) - found} acked rows lost"


def streaming_count(host: str, lab, port: int) -> int:
    conn = connect(host, lab, port)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        count = cur.fetchone()[0]
    conn.close()
    return count


def wait_streaming(host: str, lab, port: int, expected: list[str], timeout=30) -> None:
    """`host` streams to as many replicas as `expected` lists (the lab's replicas all
    connect from the loopback, so their addresses look alike), and each is in recovery."""
    deadline = time.monotonic() + timeout
    while streaming_count(host, lab, port) != len(expected):
        assert time.monotonic() < deadline, (
            f"{host}:{port} streams to {streaming_count(host, lab, port)} replicas, not "
            f"{len(expected)}"
        )
        time.sleep(0.2)
    for replica in expected:
        answer = probe.probe(replica, port)
        assert answer.in_recovery and answer.wal_receiver_status == "streaming", replica


def confirm(admin_client, url, data) -> Campaign:
    before = Campaign.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    response = admin_client.post(url, {**data, "confirm": "yes"}, follow=True)
    assert response.status_code == 200
    campaign = Campaign.objects.filter(pk__gt=before).order_by("pk").last()
    assert campaign is not None, response.content.decode()[:3000]
    return campaign


def test_move_three_herds_to_the_dr_site_and_fail_back(celery_worker, lab, site, admin_client):
    herds = site
    url = "/admin/herds/herd/"
    selected = {"action": "move_to_dr_site", "_selected_action": [h.pk for h in herds.values()]}
    page = admin_client.post(url, selected)
    assert page.status_code == 200
    text = page.content.decode()
    assert "3 of 3 herds pass every gate" in text
    for line in ("its acknowledged DR copy", "the DNS server accepts the TSIG key", "PostgreSQL"):
        assert line in text

    original = {name: f"127.0.1.{HERDS[name][1]}" for name in HERDS}
    writers = start_writers(lab, original)
    try:
        campaign = confirm(admin_client, url, {**selected, "concurrency": "3", "canary": "on"})
        campaign = wait_campaign(campaign.pk)
    finally:
        stop_writers(writers)
    assert campaign.state == CampaignState.SUCCEEDED, campaign.state_note
    assert campaign.kind == CampaignKind.SITE_SWITCHOVER and campaign.canary
    jobs = list(Job.objects.filter(campaign=campaign).order_by("wave", "pk"))
    assert [j.wave for j in jobs] == [1, 2, 2]
    assert jobs[1].started_at >= jobs[0].finished_at  # the canary first
    assert_nothing_lost(lab, writers, {name: DR for name in HERDS})
    for name, herd in herds.items():
        primary = Instance.objects.get(herd=herd, role=Role.PRIMARY)
        assert primary.server.hostname == DR
        assert not probe.probe(DR, herd.port).in_recovery
        assert dns.lookup(herd.vhost) == [DR]
        replicas = sorted(f"127.0.1.{n}" for n in [HERDS[name][1], *HERDS[name][2]] if n != 4)
        assert sorted(dns.lookup(herd.ro_vhost)) == replicas
        wait_streaming(DR, lab, herd.port, replicas)

    # The auditor's record: page, CSV, JSON.
    record = admin_client.get(f"/admin/herds/drill/site/{campaign.pk}/")
    assert record.status_code == 200
    body = record.content.decode()
    assert all(name in body for name in HERDS) and "Fail back" in body
    exported = json.loads(
        admin_client.get(f"/admin/herds/drill/site/{campaign.pk}/export.json").content
    )
    assert exported["totals"]["failures"] == 0 and exported["totals"]["data_lost_bytes"] == 0
    assert exported["totals"]["data_lost_all_exact"] is True
    assert exported["requested_by"] == "admin"
    for row in exported["herds"]:
        assert row["rto_seconds"] > 0 and row["dns_ok"] is True and row["dns_cutover_seconds"] > 0
        assert row["new_primary"].endswith(f"{DR}:{HERDS[row['herd']][0]}")
        assert all(g["passed"] for g in row["gates"]) and len(row["gates"]) == 5
    rows = list(
        csv.reader(
            io.StringIO(
                admin_client.get(
                    f"/admin/herds/drill/site/{campaign.pk}/export.csv"
                ).content.decode()
            )
        )
    )
    assert rows[0][:2] == ["campaign", "herd"] and len(rows) == 4

    # Fail back: each herd to the primary it had before.
    back_url = f"/admin/herds/drill/site/{campaign.pk}/failback/"
    page = admin_client.get(back_url)
    assert page.status_code == 200
    assert f"its primary before campaign #{campaign.pk}" in page.content.decode()
    writers = start_writers(lab, {name: DR for name in HERDS}, first=10_000_000)
    try:
        back = confirm(admin_client, back_url, {"concurrency": "3"})
        back = wait_campaign(back.pk)
    finally:
        stop_writers(writers)
    assert back.state == CampaignState.SUCCEEDED, back.state_note
    assert back.kind == CampaignKind.FAILBACK and back.reverse_of_id == campaign.pk
    assert_nothing_lost(lab, writers, original)
    for name, herd in herds.items():
        primary = Instance.objects.get(herd=herd, role=Role.PRIMARY)
        assert primary.server.hostname == original[name]
        assert dns.lookup(herd.vhost) == [original[name]]
        replicas = sorted(f"127.0.1.{n}" for n in HERDS[name][2])
        wait_streaming(original[name], lab, herd.port, replicas)
        assert sorted(dns.lookup(herd.ro_vhost)) == replicas


def test_a_target_that_fell_behind_is_refused_and_halts_the_campaign(celery_worker, lab, site):
    """Gates passed at the confirmation; then sitea's DR copy stops receiving while its
    primary writes 30 MB. The canary's switchover refuses ("… behind"), changing
    nothing; the campaign halts with the other herds still held; abandon cancels them."""
    herds = [site["sitea"], site["siteb"], site["sitec"]]
    checks = site_drill.check(herds, {})
    assert all(c.ok for c in checks), [(c.herd.name, c.failed_gates) for c in checks]
    # stall srv4's WAL receiver of sitea, then write 30 MB on its primary
    conn = connect(DR, lab, HERDS["sitea"][0])
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_wal_receiver")
        receiver = cur.fetchone()[0]
    conn.close()
    os.kill(receiver, signal.SIGSTOP)
    try:
        writer = psycopg2.connect(
            host="127.0.1.1",
            port=HERDS["sitea"][0],
            dbname="postgres",
            user="elephaas",
            password=lab.secret("pg_password"),
        )
        writer.autocommit = True
        with writer.cursor() as cur:
            cur.execute("CREATE TABLE filler (v text)")
            cur.execute(
                "INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 200000)"
            )
        writer.close()
        campaign = site_drill.start(
            CampaignKind.SITE_SWITCHOVER, checks, user=None, concurrency=2, canary=True
        )
        campaign = wait_campaign(campaign.pk, timeout=120)
    finally:
        os.kill(receiver, signal.SIGCONT)
    assert campaign.state == CampaignState.HALTED, campaign.state_note
    canary, *rest = Job.objects.filter(campaign=campaign).order_by("wave", "pk")
    assert canary.herd.name == "sitea" and canary.state == JobState.FAILED
    assert "behind the primary" in canary.error and "nothing done" in canary.error
    assert (
        Instance.objects.get(herd=site["sitea"], role=Role.PRIMARY).server.hostname == "127.0.1.1"
    )
    assert not probe.probe("127.0.1.1", HERDS["sitea"][0]).in_recovery  # untouched
    assert [j.state for j in rest] == [JobState.QUEUED, JobState.QUEUED]
    assert all(j.held for j in rest)
    from instances.jobs import campaigns

    campaigns.abandon(campaign, None)
    campaign = wait_campaign(campaign.pk)
    assert campaign.state == CampaignState.ABANDONED
    assert all(
        j.state == JobState.CANCELLED for j in Job.objects.filter(pk__in=[j.pk for j in rest])
    )
