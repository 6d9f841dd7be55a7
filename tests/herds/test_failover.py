"""The DR failover on the lab, through the real worker, BIND and a writing client."""

from __future__ import annotations

import time

import pytest

from herds.models import Drill
from instances import probe
from instances.models import JobKind, JobState
from instances.wal import lsn_to_int
from lab import fleet
from tests.herds.drill_lab import (
    PORT,
    instances,
    rediscover,
    run,
    start,
    stop,
    write,
)

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def test_it_fails_over_to_the_most_up_to_date_replica_when_the_primary_server_dies(
    celery_worker, lab, drill
):
    from herds import dns

    stop(3)  # srv3 falls behind
    lsn = write(lab, 2000)
    deadline = time.monotonic() + 20
    while probe.probe("127.0.1.2", PORT).replay_lsn < lsn and time.monotonic() < deadline:
        time.sleep(0.05)
    rediscover("127.0.1.1")  # the inventory learns the primary's last position
    # The primary's server dies: Postgres, sshd and every open SSH session gone.
    fleet.crash_server(1)
    start(3)
    # Its server is gone: its last recorded position is only a lower bound of the loss,
    # so the failover is refused until a DBA accepts an unknown loss.
    refused = run(JobKind.FAILOVER, drill)
    assert refused.state == JobState.FAILED
    assert "at least 0 bytes lost (primary last seen at " in refused.error
    assert "the true loss is unknown" in refused.error
    assert "tick 'accept data loss'" in refused.error
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # nothing was changed
    job = run(JobKind.FAILOVER, drill, accept_data_loss=True)
    assert job.state == JobState.SUCCEEDED, job.error
    record = Drill.objects.get(job=job)
    assert record.new_primary == f"drill on 127.0.1.2:{PORT}"
    assert (record.data_lost_bytes, record.data_lost_exact) == (0, False)
    assert "at least 0 bytes lost, the true loss is unknown" in job.summary
    assert "0 bytes lost)" not in job.summary
    assert "could not be reached to stop it" in job.summary
    assert probe.probe("127.0.1.2", PORT).in_recovery is False
    assert probe.wal_receiver("127.0.1.3", PORT)[:2] == ("streaming", "127.0.1.2")
    assert dns.lookup(drill.vhost) == ["127.0.1.2"]
    old = instances(drill)["127.0.1.1"]
    assert old.fenced and old.needs_rebuild and old.online is False


def test_it_measures_the_loss_against_the_old_primarys_own_wal(celery_worker, lab, drill):
    """The primary crashes (immediate stop: no shutdown checkpoint) on a server that still
    answers SSH, several MB ahead of its replicas: the failover reads its true end of WAL
    from its data directory, so the loss is exact, and over the limit it is refused."""
    stop(2)
    stop(3)
    write(lab, 30000)  # several MB of WAL the replicas never receive
    rediscover("127.0.1.1")
    stop(1, "immediate")
    start(2)
    start(3)
    refused = run(JobKind.FAILOVER, drill)
    assert refused.state == JobState.FAILED
    assert "refused: promote drill on" in refused.error
    assert "lost: it is that far behind the old primary's end of WAL" in refused.error
    assert "that loses more than the 1.0 MB allowed" in refused.error
    assert "tick 'accept data loss'" in refused.error
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # nothing was changed
    assert not Drill.objects.filter(job=refused).exists()
    [note] = refused.steps.filter(name="the old primary's end of WAL")
    assert note.output.startswith("its WAL ends at ") and "in production" in note.output

    accepted = run(JobKind.FAILOVER, drill, accept_data_loss=True)
    assert accepted.state == JobState.SUCCEEDED, accepted.error
    record = Drill.objects.get(job=accepted)
    assert record.data_lost_bytes > 1024 * 1024 and record.data_lost_exact
    assert "the true loss is unknown" not in accepted.summary
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
