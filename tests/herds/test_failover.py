"""The DR failover on the lab, through the real worker, BIND and a writing client."""

from __future__ import annotations

import os
import signal
import time

import pytest

from herds.models import Drill
from instances import probe
from instances.jobs import queue
from instances.models import Instance, Job, JobKind, JobState
from instances.wal import lsn_to_int
from lab import fleet
from tests.fence_hook import LOG as FENCE_LOG
from tests.helpers import wait_for_job
from tests.herds.drill_lab import (
    NAME,
    PORT,
    Writer,
    caught_up,
    instances,
    kill9,
    rediscover,
    rows_on,
    run,
    stall_senders,
    start,
    stop,
    write,
)

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_fails_over_when_the_primary_server_dies_and_finishes_the_fence_when_it_returns(
    celery_worker, lab, drill
):
    """The primary's server dies (its disk cannot be read): the loss is only bounded, the
    fencing command runs, and when the server comes back with PostgreSQL started as a boot
    would, the health sweep stops it and the drill shows the split-brain window."""
    from herds import dns
    from instances import health

    stop(3)  # srv3 falls behind
    lsn = write(lab, 2000)
    deadline = time.monotonic() + 20
    while probe.probe("127.0.1.2", PORT).replay_lsn < lsn and time.monotonic() < deadline:
        time.sleep(0.05)
    rediscover("127.0.1.1")  # the inventory learns the primary's last position
    # The primary's server dies: Postgres, sshd and every open SSH session gone.
    fleet.crash_server(1)
    start(3)
    rediscover("127.0.1.3")  # srv3 is back online in the inventory
    drill.ro_vhost = f"{drill.vhost}-ro"
    drill.save()
    # Its server is gone: its last recorded position is only a lower bound of the loss,
    # so the failover is refused until a DBA accepts an unknown loss.
    refused = run(JobKind.FAILOVER, drill)
    assert refused.state == JobState.FAILED
    assert "at least 0 bytes lost (primary last seen at " in refused.error
    assert "the true loss is unknown" in refused.error
    assert "tick 'accept data loss'" in refused.error
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # nothing was changed
    FENCE_LOG.unlink(missing_ok=True)
    job = run(JobKind.FAILOVER, drill, accept_data_loss=True)
    assert job.state == JobState.SUCCEEDED, job.error
    record = Drill.objects.get(job=job)
    assert record.new_primary == f"{NAME} on 127.0.1.2:{PORT}"
    assert (record.data_lost_bytes, record.data_lost_exact) == (0, False)
    assert "at least 0 bytes lost, the true loss is unknown" in job.summary
    assert "0 bytes lost)" not in job.summary
    assert "could not be reached to stop it" in job.summary
    # The environment's fencing command ran on the controller, and said it worked.
    assert FENCE_LOG.read_text() == f"127.0.1.1 {NAME}\n"
    assert "fencing command succeeded (powered off 127.0.1.1)" in record.fence_outcome
    assert probe.probe("127.0.1.2", PORT).in_recovery is False
    assert probe.wal_receiver("127.0.1.3", PORT)[:2] == ("streaming", "127.0.1.2")
    assert dns.lookup(drill.vhost) == ["127.0.1.2"]
    assert dns.lookup(drill.ro_vhost) == ["127.0.1.3"]  # not the fenced old primary
    old = instances(drill)["127.0.1.1"]
    assert old.fenced and old.needs_rebuild and old.online is False
    assert old.fence_confirmed_at is None  # only the inventory fences it so far

    # The server comes back and boots its clusters (start.conf still auto): two primaries.
    fleet.ensure_server(1)
    fleet.boot_clusters(1)
    assert probe.probe("127.0.1.1", PORT).in_recovery is False
    summary = health.sweep()  # one health interval
    assert summary.fence_jobs == 1
    [fence] = Job.objects.filter(kind=JobKind.FENCE, instance=old)
    assert fence.requested_by_name == "(schedule)"
    fence = wait_for_job(fence, timeout=60)
    assert fence.state == JobState.SUCCEEDED, fence.error
    assert fence.summary.startswith(f"SPLIT BRAIN: {NAME} on 127.0.1.1:{PORT} was accepting writes")
    record.refresh_from_db()
    assert record.split_brain_from is not None and record.split_brain_until is not None
    assert record.split_brain_from < record.split_brain_until <= fence.finished_at
    ns = fleet.server_ns(1)
    assert not fleet.cluster_running(ns, "15", NAME)
    assert (ns.folder / "etc/15/drill/start.conf").read_text() == "manual\n"
    assert (ns.folder / "lib/15/drill.elephaas-fenced").exists()
    old.refresh_from_db()
    assert old.fence_confirmed_at is not None
    assert health.sweep().fence_jobs == 0  # confirmed and down: nothing more to do

    # Start refuses it: the inventory's flag, and the marker on its server even when a DBA
    # cleared the flag.
    [refused_start] = queue.create_jobs(JobKind.START, [old])
    refused_start = wait_for_job(refused_start, timeout=60)
    assert refused_start.state == JobState.FAILED and "is fenced" in refused_start.error
    Instance.objects.filter(pk=old.pk).update(fenced=False)
    [refused_start] = queue.create_jobs(JobKind.START, [old])
    refused_start = wait_for_job(refused_start, timeout=60)
    assert refused_start.state == JobState.FAILED
    assert "is fenced on its server (fenced: job " in refused_start.error
    assert not fleet.cluster_running(ns, "15", NAME)


def test_it_salvages_the_wal_a_crashed_primary_never_sent_and_loses_no_commit(
    celery_worker, lab, drill
):
    """The replicas stall several MB behind while a client commits row after row; the
    primary's postgres is killed -9 on a server that still answers SSH. The failover reads
    its end of WAL, copies what the best replica lacks from its pg_wal, waits for the
    replay, then promotes: every acknowledged commit is on the new primary, no tick."""
    writer = Writer("127.0.1.1", lab)
    caught_up(lab)
    stalled = stall_senders(lab)
    writer.start()
    write(lab, 30000)  # several MB of WAL besides the writer's commits
    time.sleep(0.5)
    kill9(1)
    writer.join(timeout=30)
    for pid in stalled:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert len(writer.acked) > 50
    job = run(JobKind.FAILOVER, drill)
    assert job.state == JobState.SUCCEEDED, job.error
    record = Drill.objects.get(job=job)
    assert (record.data_lost_bytes, record.data_lost_exact) == (0, True)
    assert record.wal_salvaged_bytes > 3 * 1024 * 1024
    assert "salvaged " in job.summary and "of WAL from the old primary; 0 bytes lost" in job.summary
    [note] = job.steps.filter(name="the old primary's end of WAL")
    assert lsn_to_int(note.output.split()[4]) == lsn_to_int(record.promoted_lsn)
    new_host = record.new_primary.split()[2].split(":")[0]
    assert rows_on(new_host, lab, writer.acked) == len(writer.acked)
    old = instances(drill)["127.0.1.1"]
    assert old.fenced and old.fence_confirmed_at is not None
    assert "stopped and fenced (fence marker, start.conf manual)" in record.fence_outcome


def test_a_failed_salvage_falls_back_to_the_exact_loss_rules(celery_worker, lab, drill):
    """The replicas' servers no longer trust the old primary's host key, so the copy
    fails: the job says the salvage failed and applies the loss rules to the exact loss;
    skipping the salvage and accepting the loss then fails over with that exact loss."""
    caught_up(lab)
    stall_senders(lab)
    write(lab, 30000)  # several MB of WAL the replicas never receive
    rediscover("127.0.1.1")
    kill9(1)
    known_hosts = [fleet.server_ns(n).folder / "lib" / ".ssh" / "known_hosts" for n in (2, 3)]
    for path in known_hosts:
        path.rename(path.with_suffix(".aside"))
    try:
        refused = run(JobKind.FAILOVER, drill)
    finally:
        for path in known_hosts:
            path.with_suffix(".aside").rename(path)
    assert refused.state == JobState.FAILED
    assert f"the WAL salvage from {NAME} on 127.0.1.1" in refused.error
    assert "copying the WAL from" in refused.error and "rsync exit" in refused.error
    assert "that loses more than the 1.0 MB allowed" in refused.error
    assert "tick 'accept data loss'" in refused.error
    assert refused.steps.filter(name="salvage impossible").exists()
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # nothing was promoted
    assert Drill.objects.get(job=refused).outcome.startswith("refused after a failed salvage")

    accepted = run(JobKind.FAILOVER, drill, accept_data_loss=True, skip_salvage=True)
    assert accepted.state == JobState.SUCCEEDED, accepted.error
    record = Drill.objects.get(job=accepted)
    assert record.data_lost_bytes > 1024 * 1024 and record.data_lost_exact
    assert not record.wal_salvaged_bytes and "salvaged" not in accepted.summary
    [note] = accepted.steps.filter(name="the old primary's end of WAL")
    end = lsn_to_int(note.output.split()[4])
    assert record.data_lost_bytes == end - lsn_to_int(record.promoted_lsn)


def test_it_proves_a_failover_lost_nothing_when_the_replica_has_all_the_wal(
    celery_worker, lab, drill
):
    """Replicas caught up, then the primary crashes on a server that answers SSH: the
    failover proves 0 bytes lost and needs no "accept data loss"."""
    write(lab, 2000)
    deadline = time.monotonic() + 20
    while True:
        sent = probe.probe("127.0.1.1", PORT).lsn
        received = [probe.probe(f"127.0.1.{n}", PORT).receive_lsn for n in (2, 3)]
        if all(r and lsn_to_int(r) >= lsn_to_int(sent) for r in received):
            break
        assert time.monotonic() < deadline, "the replicas did not catch up"
        time.sleep(0.05)
    stop(1, "immediate")
    job = run(JobKind.FAILOVER, drill)
    assert job.state == JobState.SUCCEEDED, job.error
    record = Drill.objects.get(job=job)
    assert (record.data_lost_bytes, record.data_lost_exact) == (0, True)
    assert "0 bytes lost)" in job.summary
    [plan] = job.steps.filter(name="plan")
    assert "0 bytes lost: it has all WAL up to the old primary's end of WAL" in plan.output
