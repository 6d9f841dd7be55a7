"""The DR failover on the lab, through the real worker, BIND and a writing client."""

from __future__ import annotations

import time

import pytest

from herds.models import Drill
from instances import probe
from instances.models import JobKind, JobState
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


def test_it_refuses_a_lossy_failover_unless_data_loss_is_accepted(celery_worker, lab, drill):
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
    assert "tick 'accept data loss'" in refused.error
    assert probe.probe("127.0.1.2", PORT).in_recovery is True  # nothing was changed
    assert not Drill.objects.filter(job=refused).exists()

    accepted = run(JobKind.FAILOVER, drill, accept_data_loss=True)
    assert accepted.state == JobState.SUCCEEDED, accepted.error
    record = Drill.objects.get(job=accepted)
    assert record.data_lost_bytes > 1024 * 1024 and not record.data_lost_exact
    assert "lost, the true loss is unknown" in accepted.summary
