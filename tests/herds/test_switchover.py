"""The planned switchover on the lab, through the real worker, BIND and a writing client."""

from __future__ import annotations

import time

import pytest

from herds.models import Drill
from instances import probe
from instances.choices import Role
from instances.jobs import queue
from instances.models import JobKind, JobState
from tests.helpers import wait_for_job
from tests.herds.drill_lab import (
    NAME,
    PORT,
    Writer,
    connect,
    instances,
    run,
)

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_switches_over_losing_no_commit_then_fails_back(celery_worker, lab, drill):
    from herds import dns

    before = instances(drill)
    drill.ro_vhost = f"{drill.vhost}-ro"
    drill.save()
    writer = Writer("127.0.1.1", lab)
    writer.start()
    time.sleep(1)
    job = run(JobKind.SWITCHOVER, drill, expected_primary_id=before["127.0.1.1"].pk)
    writer.stop.set()
    writer.join(timeout=10)
    assert job.state == JobState.SUCCEEDED, job.error
    assert len(writer.acked) > 50
    record = Drill.objects.get(job=job)
    new_host = record.new_primary.split(" on ")[1].split(":")[0]
    assert new_host in ("127.0.1.2", "127.0.1.3")
    assert record.data_lost_bytes == 0 and record.data_lost_exact
    assert record.writable_at and record.dns_ok
    assert record.rto_seconds < 30
    # Every acknowledged commit is on the new primary.
    conn = connect(new_host, lab)
    with conn.cursor() as cur:
        cur.execute("SELECT v FROM drill_rows")
        present = {row[0] for row in cur.fetchall()}
    conn.close()
    assert set(writer.acked) <= present
    # DNS answers the new primary; the old primary streams from it as a replica.
    assert dns.lookup(drill.vhost) == [new_host]
    # The read-only vhost follows too: the old primary and the other replica, not the new one.
    assert sorted(dns.lookup(drill.ro_vhost)) == sorted(
        {"127.0.1.1", "127.0.1.2", "127.0.1.3"} - {new_host}
    )
    assert probe.wal_receiver("127.0.1.1", PORT)[:2] == ("streaming", new_host)
    after = instances(drill)
    assert after[new_host].role == Role.PRIMARY and after[new_host].upstream is None
    assert after["127.0.1.1"].role == Role.REPLICA
    assert after["127.0.1.1"].upstream == after[new_host]
    other = ({"127.0.1.2", "127.0.1.3"} - {new_host}).pop()
    assert probe.wal_receiver(other, PORT)[:2] == ("streaming", new_host)
    assert job.summary.startswith(f"{NAME} switched over to {NAME} on {new_host}:{PORT}")

    # Failback: a planned switchover back to the original primary restores the layout.
    back = run(
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


def test_it_runs_exactly_one_of_two_concurrent_switchovers(celery_worker, drill):
    primary = instances(drill)["127.0.1.1"]
    created = queue.create_jobs(
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
        conn = connect(host, lab)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_wal_replay_pause()")
        conn.close()
    [job] = queue.create_jobs(JobKind.SWITCHOVER, [drill])
    deadline = time.monotonic() + 60
    while not JobStep.objects.filter(job=job, name__startswith="wait until").exists():
        assert time.monotonic() < deadline, "the switchover never reached its wait"
        time.sleep(0.05)
    queue.cancel(job, None)
    job = wait_for_job(job, timeout=120)
    assert job.state == JobState.FAILED
    assert job.error == (
        f"switchover of {NAME} aborted before promotion (cancelled by a user); the old primary "
        f"{NAME} on 127.0.1.1:{PORT} was restarted, nothing promoted"
    )
    assert probe.probe("127.0.1.1", PORT).in_recovery is False
    for host in ("127.0.1.2", "127.0.1.3"):
        assert probe.probe(host, PORT).in_recovery is True
    assert instances(drill)["127.0.1.1"].role == Role.PRIMARY
    assert "old primary restarted" in Drill.objects.get(job=job).outcome


def test_it_promotes_exactly_the_confirmed_target_or_refuses_without_substituting(
    celery_worker, lab, drill
):
    from tests.herds.drill_lab import start, stop

    before = instances(drill)
    primary, chosen = before["127.0.1.1"], before["127.0.1.3"]
    params = {"expected_primary_id": primary.pk, "target_id": chosen.pk}
    stop(3)  # the confirmed target stops answering after the confirmation
    try:
        refused = run(JobKind.SWITCHOVER, drill, **params)
    finally:
        start(3)
    assert refused.state == JobState.FAILED
    assert f"refused: {NAME} on 127.0.1.3:{PORT} no longer answers: nothing done" in refused.error
    assert probe.probe("127.0.1.1", PORT).in_recovery is False  # nothing was changed
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # no substitute promoted
    assert not Drill.objects.filter(job=refused).exists()
    deadline = time.monotonic() + 30
    while probe.wal_receiver("127.0.1.3", PORT) is None or (
        probe.wal_receiver("127.0.1.3", PORT)[0] != "streaming"
    ):
        assert time.monotonic() < deadline, "srv3 did not stream again"
        time.sleep(0.1)
    job = run(JobKind.SWITCHOVER, drill, **params)
    assert job.state == JobState.SUCCEEDED, job.error
    assert probe.probe("127.0.1.3", PORT).in_recovery is False
    record = Drill.objects.get(job=job)
    assert record.new_primary == f"{NAME} on 127.0.1.3:{PORT}"
    assert "the target the DBA confirmed" in record.plan


def test_a_replica_down_during_the_switchover_is_in_the_plan_and_the_result(
    celery_worker, lab, drill, admin_client
):
    """…and it is flagged "upstream wrong" until a bulk remaster to each herd's primary
    (the admin's "each replica's herd primary") points it at the new one."""
    from instances.choices import HERD_PRIMARY, ReplicationHealth
    from instances.health_rules import replication_q
    from instances.models import Instance, Job
    from tests.herds.drill_lab import start, stop

    before = instances(drill)
    stop(3)
    try:
        job = run(
            JobKind.SWITCHOVER,
            drill,
            expected_primary_id=before["127.0.1.1"].pk,
            target_id=before["127.0.1.2"].pk,
        )
    finally:
        start(3)
    assert job.state == JobState.SUCCEEDED, job.error
    plan = job.steps.get(name="plan").output
    assert f"127.0.1.3:{PORT} not answering: will need a remaster once it is back" in plan
    assert job.steps.filter(name__contains=f"127.0.1.3:{PORT} not answering").count() == 1
    assert f"not repointed (remaster once back): {NAME} on 127.0.1.3:{PORT}" in job.summary
    # It still follows the old primary: nobody pretended otherwise, and it is flagged.
    left = instances(drill)["127.0.1.3"]
    assert left.upstream_id == before["127.0.1.1"].pk and left.needs_remaster
    wrong = Instance.objects.filter(replication_q(ReplicationHealth.UPSTREAM_WRONG))
    assert list(wrong.values_list("pk", flat=True)) == [left.pk]
    listed = admin_client.get("/admin/instances/instance/?replication=upstream_wrong")
    assert listed.status_code == 200 and "upstream wrong" in listed.content.decode()
    # The bulk fix: remaster the flagged replicas to their herd's primary.
    response = admin_client.post(
        "/admin/instances/instance/",
        {
            "action": "remaster_action",
            "_selected_action": [left.pk],
            "confirm": "yes",
            "upstream_id": str(HERD_PRIMARY),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = wait_for_job(Job.objects.get(kind=JobKind.REMASTER, instance=left), timeout=60)
    assert job.state == JobState.SUCCEEDED, job.error
    assert (
        f"the herd's recorded primary, {NAME} on 127.0.1.2:{PORT}"
        in job.steps.get(name="new upstream").output
    )
    fixed = instances(drill)["127.0.1.3"]
    assert fixed.upstream_id == before["127.0.1.2"].pk and not fixed.needs_remaster
    assert probe.wal_receiver("127.0.1.3", PORT)[:2] == ("streaming", "127.0.1.2")
