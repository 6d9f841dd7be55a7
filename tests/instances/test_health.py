"""Health polling against the lab, through the real worker: what a sweep records when
instances answer, lag, stop, lose their primary, or sit behind an unreachable address."""

from __future__ import annotations

import socket
import time

import pytest
from django.conf import settings

from herds.models import Herd
from instances.admin.display import replication_badge
from instances.choices import ReplicationHealth, Role
from instances.health_rules import replication_health
from instances.models import Instance
from instances.tasks import poll_health
from instances.wal import lsn_to_int
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment, make_server
from tests.helpers import add_lab_server

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

NAME = "healthherd"
PORT = 5480
MB = 1024 * 1024


@pytest.fixture(scope="module")
def healthherd(lab_servers):
    """Primary on srv1, streaming replicas on srv2 and srv3."""
    # From scratch: a run killed half-way may have left a replica without data.
    lab_herd.drop(NAME)
    info = lab_herd.create(NAME, primary=1, replicas=[2, 3], port=PORT)
    yield info
    lab_herd.drop(NAME)


@pytest.fixture
def running(healthherd):
    """Every instance of the herd running and streaming, before and after each test
    (tests stop some of them outside ElepHaaS)."""
    version = healthherd["version"]

    def start_all() -> None:
        for number in (1, 2, 3):
            fleet.start_cluster(fleet.server_ns(number), version, NAME)
        # Also resumes a replay a failed test left paused.
        for number in (2, 3):
            fleet.psql(
                fleet.server_ns(number),
                PORT,
                "SELECT pg_wal_replay_resume() WHERE pg_is_wal_replay_paused()",
            )
        lab_herd.wait_streaming(1, PORT, 2)

    start_all()
    yield healthherd
    start_all()


@pytest.fixture
def inventory(lab_servers, running) -> dict[str, Instance]:
    """The herd as ElepHaaS records it: srv1 primary, srv2 and srv3 replicas of it."""
    environment = make_environment("prod")
    servers = [add_lab_server(server, environment) for server in lab_servers[:3]]
    herd = Herd.objects.create(
        name=NAME, environment=environment, port=PORT, pg_version=int(running["version"])
    )
    primary = Instance.objects.create(herd=herd, server=servers[0], role=Role.PRIMARY)
    rows = {"srv1": primary}
    for number, server in ((2, servers[1]), (3, servers[2])):
        rows[f"srv{number}"] = Instance.objects.create(
            herd=herd, server=server, role=Role.REPLICA, upstream=primary
        )
    return rows


def sweep() -> dict:
    return poll_health.delay().get(timeout=60)


def fresh(instance: Instance) -> Instance:
    return Instance.objects.with_related().get(pk=instance.pk)


def stop(number: int) -> None:
    fleet.server_ns(number).run(["pg_ctlcluster", "15", NAME, "stop", "-m", "fast"])


def write_wal(segments: int) -> None:
    """Move the primary's WAL on by at least `segments` × 16 MB (each switch starts a new
    segment once something was written)."""
    sql = "CREATE TABLE IF NOT EXISTS health_t (x int);" + (
        "INSERT INTO health_t VALUES (1); SELECT pg_switch_wal();" * segments
    )
    fleet.psql(fleet.server_ns(1), PORT, sql)


def wait_caught_up(replicas: int = 2, timeout: float = 30) -> None:
    """Until the primary sees every replica replayed up to its current WAL position."""
    sql = "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= pg_current_wal_lsn()"
    deadline = time.monotonic() + timeout
    while int(fleet.psql(fleet.server_ns(1), PORT, sql)) < replicas:
        assert time.monotonic() < deadline, "replicas did not catch up"
        time.sleep(0.2)


def sweep_until(instance: Instance, done, what: str, timeout: float = 20) -> Instance:
    """Sweep until the instance's row satisfies `done` (replication moves on its own time)."""
    deadline = time.monotonic() + timeout
    while True:
        sweep()
        row = fresh(instance)
        if done(row):
            return row
        assert time.monotonic() < deadline, f"{row}: not {what} after {timeout} s"
        time.sleep(0.5)


def test_it_records_role_lsn_and_lag_of_every_instance(celery_worker, inventory):
    write_wal(1)
    wait_caught_up()
    summary = sweep()
    assert summary["instances"] == 3 and summary["online"] == 3 and not summary["skipped"]
    primary = fresh(inventory["srv1"])
    assert (primary.online, primary.role, primary.last_error) == (True, Role.PRIMARY, "")
    assert primary.last_lsn and lsn_to_int(primary.last_lsn) >= 16 * MB
    assert (primary.receive_lsn, primary.replay_lsn, primary.lag_bytes) == ("", "", None)
    assert primary.upstream_streaming is None and primary.last_checked is not None
    for key in ("srv2", "srv3"):
        replica = fresh(inventory[key])
        assert (replica.online, replica.role, replica.last_error) == (True, Role.REPLICA, "")
        assert replica.upstream_streaming is True
        assert replica.last_lsn == replica.replay_lsn
        assert lsn_to_int(replica.receive_lsn) >= lsn_to_int(replica.replay_lsn)
        # Measured against the primary's LSN of the same sweep; an idle herd is caught up.
        expected = max(0, lsn_to_int(primary.last_lsn) - lsn_to_int(replica.replay_lsn))
        assert replica.lag_bytes == expected and replica.lag_bytes < MB
        assert replica.lag_seconds is not None
        assert replica.state_changed_at is None  # first observation, no change
        assert replication_health(replica) == ReplicationHealth.STREAMING


def test_it_measures_a_replica_whose_replay_is_paused(celery_worker, inventory):
    fleet.psql(fleet.server_ns(2), PORT, "SELECT pg_wal_replay_pause()")
    write_wal(2)
    # The WAL receiver keeps receiving while replay waits.
    replica = sweep_until(
        inventory["srv2"], lambda row: (row.lag_bytes or 0) > 16 * MB, "behind by 16 MB"
    )
    assert replica.upstream_streaming is True
    assert replica.receive_lsn != replica.replay_lsn
    assert replication_health(replica) == ReplicationHealth.LAGGING
    assert "lagging: " in replication_badge(replica)
    # Its sibling, replaying, catches up.
    sweep_until(
        inventory["srv3"], lambda row: row.lag_bytes is not None and row.lag_bytes < MB, "caught up"
    )


def test_it_marks_a_stopped_replica_offline_and_keeps_its_last_lsn(celery_worker, inventory):
    sweep()
    before = fresh(inventory["srv3"])
    stop(3)
    summary = sweep()
    assert summary["offline"] == 1 and summary["changed"] == 1
    replica = fresh(inventory["srv3"])
    assert replica.online is False
    assert "127.0.1.3" in replica.last_error and str(PORT) in replica.last_error
    assert replica.state_changed_at is not None and replica.state_changed_at > before.last_checked
    # What it did not say is not invented: role, LSNs and lag stay as last seen.
    assert replica.role == Role.REPLICA
    assert (replica.last_lsn, replica.replay_lsn, replica.lag_bytes) == (
        before.last_lsn,
        before.replay_lsn,
        before.lag_bytes,
    )
    assert replica.last_checked > before.last_checked
    assert fresh(inventory["srv2"]).online is True
    # Down again at the next sweep: not a new change.
    sweep()
    assert fresh(inventory["srv3"]).state_changed_at == replica.state_changed_at
    # Back up: a change again, and the error is cleared.
    fleet.start_cluster(fleet.server_ns(3), "15", NAME)
    sweep()
    back = fresh(inventory["srv3"])
    assert (back.online, back.last_error) == (True, "")
    assert back.state_changed_at > replica.state_changed_at


def test_it_shows_upstream_gone_when_the_primary_stops(celery_worker, inventory):
    sweep()
    stop(1)
    # The WAL receiver notices within moments that the primary left.
    replica = sweep_until(
        inventory["srv2"], lambda row: row.upstream_streaming is False, "off its stream"
    )
    primary = fresh(inventory["srv1"])
    assert primary.online is False and "127.0.1.1" in primary.last_error
    assert primary.role == Role.PRIMARY  # not re-guessed while it does not answer
    assert replica.online is True and replica.role == Role.REPLICA
    assert replica.lag_bytes is None  # nothing to measure against
    assert replication_health(replica) == ReplicationHealth.UPSTREAM_GONE
    assert ">upstream gone<" in replication_badge(replica)


def test_it_does_not_let_unreachable_servers_delay_the_sweep(celery_worker, inventory):
    """One address refuses, one accepts TCP and never answers: each costs at most the
    probe timeout, in parallel with the rest; what answered is written without waiting
    for the silent one (HEALTH_FIRST_WRITE)."""
    herd = inventory["srv1"].herd
    environment = herd.environment
    refused = Instance.objects.create(
        herd=herd,
        server=make_server(hostname="127.0.1.250", environment=environment),
        role=Role.REPLICA,
    )
    silent = Instance.objects.create(
        herd=herd,
        server=make_server(hostname="127.0.1.251", environment=environment),
        role=Role.REPLICA,
        online=True,
    )
    timeout = settings.PG_PROBE_CONNECT_TIMEOUT
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.1.251", PORT))
        listener.listen(16)  # the kernel completes the handshake; nobody ever answers
        started = time.monotonic()
        summary = sweep()
        elapsed = time.monotonic() - started
    assert summary["instances"] == 5 and summary["online"] == 3 and summary["offline"] == 2
    assert elapsed < timeout + 3, f"sweep took {elapsed:.1f} s with a {timeout} s timeout"
    assert summary["seconds"] < timeout + 2
    refused = fresh(refused)
    assert refused.online is False and "127.0.1.250" in refused.last_error
    assert "refused" in refused.last_error.lower()
    silent = fresh(silent)
    assert silent.online is False and "127.0.1.251" in silent.last_error
    assert "timeout" in silent.last_error.lower()
    assert silent.state_changed_at is not None  # recorded online, now not answering
    # The answering ones (and the refused one, which failed at once) were written after
    # HEALTH_FIRST_WRITE, in one batch; the silent one when its probe gave up.
    assert settings.HEALTH_FIRST_WRITE <= summary["first_write"] < settings.HEALTH_FIRST_WRITE + 2
    assert summary["seconds"] >= timeout
    written = fresh(inventory["srv1"]).last_checked
    assert refused.last_checked == written
    assert (
        silent.last_checked - written
    ).total_seconds() >= timeout - settings.HEALTH_FIRST_WRITE - 1
    for key in ("srv1", "srv2", "srv3"):
        instance = fresh(inventory[key])
        assert instance.online is True and instance.last_checked == written
