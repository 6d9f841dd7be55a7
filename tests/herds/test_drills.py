"""Switchover and failover on the lab, through the real worker, BIND and a writing client."""

from __future__ import annotations

import secrets
import threading
import time

import psycopg2
import pytest

from herds.models import Drill, Herd
from instances import jobs, probe
from instances.choices import Role
from instances.models import Instance, JobKind, JobState
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment
from tests.helpers import add_lab_server, wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

PORT = 5520


def _connect(host: str, lab):
    return psycopg2.connect(
        host=host,
        port=PORT,
        dbname="postgres",
        user="elephaas",
        password=lab.secret("pg_password"),
        connect_timeout=3,
    )


@pytest.fixture
def drill(lab, lab_servers):
    """Herd `drill`: primary srv1, replicas srv2 and srv3, with a vhost; in the inventory."""
    lab_herd.create("drill", primary=1, replicas=[2, 3], port=PORT)
    env = make_environment("prod")
    servers = [add_lab_server(s, env) for s in lab_servers[:3]]
    jobs.run_inline(jobs.create_jobs(JobKind.DISCOVER, servers, queue=False))
    herd = Herd.objects.get(name="drill")
    herd.vhost = f"drill-{secrets.token_hex(3)}"
    herd.save()
    yield herd
    # A test may have crashed srv1: bring it back as after a reboot.
    fleet.ensure_server(1)
    fleet.boot_clusters(1)
    lab_herd.drop("drill")


def _instances(herd):
    return {i.server.hostname: i for i in Instance.objects.with_related().filter(herd=herd)}


def _run(kind, herd, **params):
    [job] = jobs.create_jobs(kind, [herd], params=params)
    return wait_for_job(job, timeout=180)


class Writer(threading.Thread):
    """A client committing one row at a time until its server goes away."""

    def __init__(self, host, lab):
        super().__init__(daemon=True)
        self.conn = _connect(host, lab)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS drill_rows (v bigint PRIMARY KEY)")
        self.acked: list[int] = []
        self.stop = threading.Event()

    def run(self):
        deadline = time.monotonic() + 120
        value = 0
        try:
            with self.conn.cursor() as cur:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    value += 1
                    cur.execute("INSERT INTO drill_rows VALUES (%s)", [value])
                    self.acked.append(value)  # only after the server acknowledged the commit
        except psycopg2.Error:
            pass


def test_it_switches_over_losing_no_commit_then_fails_back(celery_worker, lab, drill):
    from herds import dns

    before = _instances(drill)
    writer = Writer("127.0.1.1", lab)
    writer.start()
    time.sleep(1)
    job = _run(JobKind.SWITCHOVER, drill, expected_primary_id=before["127.0.1.1"].pk)
    writer.stop.set()
    writer.join(timeout=10)
    assert job.state == JobState.SUCCEEDED, job.error
    assert len(writer.acked) > 50
    record = Drill.objects.get(job=job)
    new_host = record.new_primary.split(" on ")[1].split(":")[0]
    assert new_host in ("127.0.1.2", "127.0.1.3")
    assert record.data_lost_bytes == 0 and record.writable_at and record.dns_ok
    assert record.rto_seconds < 30
    # Every acknowledged commit is on the new primary.
    conn = _connect(new_host, lab)
    with conn.cursor() as cur:
        cur.execute("SELECT v FROM drill_rows")
        present = {row[0] for row in cur.fetchall()}
    conn.close()
    assert set(writer.acked) <= present
    # DNS answers the new primary; the old primary streams from it as a replica.
    assert dns.lookup(drill.vhost) == [new_host]
    assert probe.wal_receiver("127.0.1.1", PORT)[:2] == ("streaming", new_host)
    after = _instances(drill)
    assert after[new_host].role == Role.PRIMARY and after[new_host].upstream is None
    assert after["127.0.1.1"].role == Role.REPLICA
    assert after["127.0.1.1"].upstream == after[new_host]
    other = ({"127.0.1.2", "127.0.1.3"} - {new_host}).pop()
    assert probe.wal_receiver(other, PORT)[:2] == ("streaming", new_host)
    assert job.summary.startswith(f"drill switched over to drill on {new_host}:{PORT}")

    # Failback: a planned switchover back to the original primary restores the layout.
    back = _run(
        JobKind.SWITCHOVER,
        drill,
        expected_primary_id=after[new_host].pk,
        target_id=after["127.0.1.1"].pk,
    )
    assert back.state == JobState.SUCCEEDED, back.error
    assert probe.probe("127.0.1.1", PORT).in_recovery is False
    for host in ("127.0.1.2", "127.0.1.3"):
        assert probe.wal_receiver(host, PORT)[:2] == ("streaming", "127.0.1.1")
    assert dns.lookup(drill.vhost) == ["127.0.1.1"]


def _stop(number: int, mode: str = "fast") -> None:
    fleet.server_ns(number).run(["pg_ctlcluster", "--mode", mode, "15", "drill", "stop"])


def _start(number: int) -> None:
    fleet.server_ns(number).run(["pg_ctlcluster", "15", "drill", "start"])


def _write(lab, rows: int, payload: int = 100) -> str:
    conn = _connect("127.0.1.1", lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS filler (v text)")
        cur.execute(
            "INSERT INTO filler SELECT repeat('x', %s) FROM generate_series(1, %s)", [payload, rows]
        )
        cur.execute("SELECT pg_current_wal_lsn()::text")
        lsn = cur.fetchone()[0]
    conn.close()
    return lsn


def _rediscover(hostname: str) -> None:
    from instances.models import Server

    jobs.run_inline(
        jobs.create_jobs(JobKind.DISCOVER, [Server.objects.get(hostname=hostname)], queue=False)
    )


def test_it_fails_over_to_the_most_up_to_date_replica_when_the_primary_server_dies(
    celery_worker, lab, drill
):
    from herds import dns

    _stop(3)  # srv3 falls behind
    lsn = _write(lab, 2000)
    deadline = time.monotonic() + 20
    while probe.probe("127.0.1.2", PORT).replay_lsn < lsn and time.monotonic() < deadline:
        time.sleep(0.05)
    _rediscover("127.0.1.1")  # the inventory learns the primary's last position
    # The primary's server dies: Postgres, sshd and every open SSH session gone.
    fleet.crash_server(1)
    _start(3)
    job = _run(JobKind.FAILOVER, drill)
    assert job.state == JobState.SUCCEEDED, job.error
    record = Drill.objects.get(job=job)
    assert record.new_primary == f"drill on 127.0.1.2:{PORT}"
    assert record.data_lost_bytes == 0
    assert "could not be reached to stop it" in job.summary
    assert probe.probe("127.0.1.2", PORT).in_recovery is False
    assert probe.wal_receiver("127.0.1.3", PORT)[:2] == ("streaming", "127.0.1.2")
    assert dns.lookup(drill.vhost) == ["127.0.1.2"]
    old = _instances(drill)["127.0.1.1"]
    assert old.fenced and old.needs_rebuild and old.online is False


def test_it_refuses_a_lossy_failover_unless_data_loss_is_accepted(celery_worker, lab, drill):
    _stop(2)
    _stop(3)
    _write(lab, 30000)  # several MB of WAL the replicas never receive
    _rediscover("127.0.1.1")
    _stop(1, "immediate")
    _start(2)
    _start(3)
    refused = _run(JobKind.FAILOVER, drill)
    assert refused.state == JobState.FAILED
    assert "refused: promote drill on" in refused.error
    assert "tick 'accept data loss'" in refused.error
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # nothing was changed
    assert not Drill.objects.filter(job=refused).exists()

    accepted = _run(JobKind.FAILOVER, drill, accept_data_loss=True)
    assert accepted.state == JobState.SUCCEEDED, accepted.error
    record = Drill.objects.get(job=accepted)
    assert record.data_lost_bytes > 1024 * 1024
    assert "lost" in accepted.summary


def test_it_runs_exactly_one_of_two_concurrent_switchovers(celery_worker, drill):
    primary = _instances(drill)["127.0.1.1"]
    created = jobs.create_jobs(
        JobKind.SWITCHOVER, [drill, drill], params={"expected_primary_id": primary.pk}
    )
    done = [wait_for_job(job, timeout=180) for job in created]
    states = sorted(job.state for job in done)
    assert states == [JobState.FAILED, JobState.SUCCEEDED]
    failed = next(job for job in done if job.state == JobState.FAILED)
    assert "is busy" in failed.error or "changed since the confirmation" in failed.error
    assert Drill.objects.filter(job__in=done).count() == 1


def test_it_restarts_the_old_primary_when_a_switchover_is_cancelled_before_promotion(
    celery_worker, lab, drill
):
    from instances.models import JobStep

    for host in ("127.0.1.2", "127.0.1.3"):  # the replicas stop replaying: no one catches up
        conn = _connect(host, lab)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_wal_replay_pause()")
        conn.close()
    [job] = jobs.create_jobs(JobKind.SWITCHOVER, [drill])
    deadline = time.monotonic() + 60
    while not JobStep.objects.filter(job=job, name__startswith="wait until").exists():
        assert time.monotonic() < deadline, "the switchover never reached its wait"
        time.sleep(0.05)
    jobs.cancel(job, None)
    job = wait_for_job(job, timeout=120)
    assert job.state == JobState.FAILED
    assert job.error == (
        "switchover of drill aborted before promotion (cancelled by a user); the old primary "
        f"drill on 127.0.1.1:{PORT} was restarted, nothing promoted"
    )
    assert probe.probe("127.0.1.1", PORT).in_recovery is False
    for host in ("127.0.1.2", "127.0.1.3"):
        assert probe.probe(host, PORT).in_recovery is True
    assert _instances(drill)["127.0.1.1"].role == Role.PRIMARY
    assert "old primary restarted" in Drill.objects.get(job=job).outcome
