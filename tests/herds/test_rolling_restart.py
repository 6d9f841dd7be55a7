"""Rolling restart (#14 part) on the lab, through the web admin, a campaign and the real
worker: a restart-level change pending on every member of the drill herd is cleared by a
rolling restart under a write load, with 0 acknowledged commits lost and no write gap
longer than one switchover's; "only pending" then leaves everything alone."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from herds.models import Drill
from instances import health, probe
from instances.choices import CampaignKind, CampaignState
from instances.models import Campaign, Instance, Job, JobKind, JobState, Role
from lab import fleet
from tests.herds.drill_lab import NAME, PORT, instances

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

HOSTS = ("127.0.1.1", "127.0.1.2", "127.0.1.3")


class MultiHostWriter(threading.Thread):
    """One row per transaction (100/s) through a libpq multi-host string: it follows the
    switchover by itself; records each acknowledged commit and when."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.dsn = (
            f"host={','.join(HOSTS)} port={PORT} dbname=postgres user=elephaas "
            f"password={lab.secret('pg_password')} target_session_attrs=read-write "
            "connect_timeout=1"
        )
        self.acked, self.times = [], []
        self.halt = threading.Event()

    def run(self):
        conn, value = None, 0
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("CREATE TABLE IF NOT EXISTS rr (v bigint PRIMARY KEY)")
                value += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO rr VALUES (%s)", [value])
                self.acked.append(value)
                self.times.append(time.monotonic())
                time.sleep(0.01)
            except psycopg2.Error:
                conn = None
                time.sleep(0.01)

    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.times, self.times[1:], strict=False)), default=0)


def set_everywhere(lab, sql: str) -> None:
    for number in (1, 2, 3):
        conn = psycopg2.connect(
            host=f"127.0.1.{number}",
            port=PORT,
            dbname="postgres",
            user="elephaas",
            password=lab.secret("pg_password"),
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.execute("SELECT pg_reload_conf()")
        conn.close()


def pending() -> dict[str, list[str]]:
    return {host: probe.pending_restart(host, PORT) for host in HOSTS}


def start_campaign(admin_client, drill, **options) -> Campaign:
    before = Campaign.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    data = {
        "action": "rolling_restart",
        "_selected_action": [drill.pk],
        "confirm": "yes",
        "concurrency": "1",
        **options,
    }
    response = admin_client.post("/admin/herds/herd/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return Campaign.objects.get(pk__gt=before)


def wait(campaign: Campaign, timeout=180) -> Campaign:
    deadline = time.monotonic() + timeout
    while not Campaign.objects.get(pk=campaign.pk).finished_at:
        assert time.monotonic() < deadline, Campaign.objects.get(pk=campaign.pk).state_note
        time.sleep(0.2)
    return Campaign.objects.get(pk=campaign.pk)


def test_a_rolling_restart_clears_pending_restarts_under_load_losing_nothing(
    celery_worker, lab, drill, admin_client
):
    page = admin_client.post(
        "/admin/herds/herd/", {"action": "rolling_restart", "_selected_action": [drill.pk]}
    )
    assert page.status_code == 200 and "Only instances with a pending restart" in (
        page.content.decode()
    )
    set_everywhere(lab, "ALTER SYSTEM SET max_connections = 120")  # restart-level
    set_everywhere(lab, "ALTER SYSTEM SET work_mem = '8MB'")  # reload is enough
    assert all(names == ["max_connections"] for names in pending().values()), pending()
    # The health sweep sees it: the instance list's column and filter.
    health.sweep()
    assert set(Instance.objects.filter(herd=drill).values_list("pending_restart", flat=True)) == {
        "max_connections"
    }
    listed = admin_client.get(
        f"/admin/instances/instance/?herd__id__exact={drill.pk}&pending_restart__isempty=0"
    )
    assert listed.status_code == 200 and listed.context["cl"].result_count == 3
    assert "restart pending: max_connections" in listed.content.decode()
    before = instances(drill)
    writer = MultiHostWriter(lab)
    writer.start()
    time.sleep(1)
    try:
        campaign = wait(start_campaign(admin_client, drill, mode="switchover", only_pending="on"))
    finally:
        writer.halt.set()
        writer.join(timeout=30)
    assert campaign.state == CampaignState.SUCCEEDED, campaign.state_note
    assert campaign.kind == CampaignKind.ROLLING_RESTART
    [job] = Job.objects.filter(campaign=campaign)
    assert job.kind == JobKind.ROLLING_RESTART and job.state == JobState.SUCCEEDED, job.error
    assert pending() == {host: [] for host in HOSTS}
    # Each restart recorded what it saw: nothing pending any more in the inventory either.
    assert set(Instance.objects.filter(herd=drill).values_list("pending_restart", flat=True)) == {
        ""
    }
    for host in HOSTS:
        assert probe.probe(host, PORT)  # answering
    names = list(job.steps.values_list("name", flat=True))
    restarts = [n for n in names if n.startswith("restart ")]
    assert len(restarts) == 2  # the two replicas, one at a time; the primary by the switch
    # The old primary is now a replica of a restarted one; every commit is on the new primary.
    after = instances(drill)
    new_primary = next(h for h, i in after.items() if i.role == Role.PRIMARY)
    assert new_primary in ("127.0.1.2", "127.0.1.3") and before["127.0.1.1"].role == Role.PRIMARY
    assert after["127.0.1.1"].role == Role.REPLICA
    conn = psycopg2.connect(
        host=new_primary,
        port=PORT,
        dbname="postgres",
        user="elephaas",
        password=lab.secret("pg_password"),
    )
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM rr WHERE v = ANY(%s)", [writer.acked])
        found = cur.fetchone()[0]
    conn.close()
    assert len(writer.acked) > 100 and found == len(writer.acked)
    # No write gap longer than one switchover's: the drill's stop-to-writable window plus
    # the client's reconnect.
    drill_row = Drill.objects.get(job=job)
    assert drill_row.data_lost_bytes == 0 and drill_row.data_lost_exact
    gap = writer.longest_gap()
    print(f"longest write gap {gap:.2f} s; switchover RTO {drill_row.rto_seconds:.2f} s")
    assert gap < 5.0

    # Nothing is pending any more: "only pending" leaves every instance alone.
    again = wait(start_campaign(admin_client, drill, mode="switchover", only_pending="on"))
    assert again.state == CampaignState.SUCCEEDED, again.state_note
    [job] = Job.objects.filter(campaign=again)
    assert not [n for n in job.steps.values_list("name", flat=True) if n.startswith("restart ")]
    assert "left alone (no pending restart)" in job.summary
    assert instances(drill)[new_primary].role == Role.PRIMARY


def test_a_rolling_restart_refuses_a_herd_with_a_silent_replica(celery_worker, lab, drill):
    from instances.jobs import queue
    from tests.helpers import wait_for_job

    fleet.server_ns(3).run(["pg_ctlcluster", "15", NAME, "stop"])
    try:
        [job] = queue.create_jobs(JobKind.ROLLING_RESTART, [drill], params={"mode": "in_place"})
        job = wait_for_job(job, timeout=60)
    finally:
        fleet.server_ns(3).run(["pg_ctlcluster", "15", NAME, "start"])
    assert job.state == JobState.FAILED
    assert "not answering: nothing restarted" in job.error
    assert not job.steps.filter(name__startswith="restart ").exists()
    assert Instance.objects.get(herd=drill, server__hostname="127.0.1.1").role == Role.PRIMARY
