"""Health polling decisions and badges, without the lab: plain values in, plain values out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from instances.admin.display import (
    changed_recently,
    herd_health_summary,
    replication_badge,
)
from instances.choices import HerdHealth, ReplicationHealth, Role
from instances.health_rules import (
    Unreachable,
    herd_health,
    is_lagging,
    lag_bytes,
    observe,
    replication_health,
    state_changed,
    streaming,
)
from instances.probe import ProbeResult

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=3)
MB = 1024 * 1024


def result(in_recovery: bool, lsn: str, **fields) -> ProbeResult:
    values = dict(
        in_recovery=in_recovery,
        version_num=150000,
        lsn=lsn,
        receive_lsn=lsn if in_recovery else None,
        replay_lsn=lsn if in_recovery else None,
        lag_bytes=0 if in_recovery else None,
        lag_seconds=0.0 if in_recovery else None,
        primary_conninfo="host=db1 port=5432" if in_recovery else "",
        duration=0.01,
        wal_receiver_status="streaming" if in_recovery else None,
    )
    values.update(fields)
    return ProbeResult(**values)


def recorded(online=True, role=Role.REPLICA, upstream_id=1, state_changed_at=EARLIER):
    return SimpleNamespace(
        online=online, role=role, upstream_id=upstream_id, state_changed_at=state_changed_at
    )


# --- LSN arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "replayed", "expected"),
    [
        ("0/3000060", "0/3000060", 0),
        ("0/3000060", "0/3000000", 0x60),
        ("0/4000000", "0/3000000", 16 * MB),
        # Across the 4 GB boundary: the high word counts 2**32 bytes.
        ("1/0", "0/FFFFFFFF", 1),
        ("16/B374D848", "15/B374D848", 2**32),
        ("a/ff", "A/FE", 1),  # PostgreSQL prints upper case; lower case still parses
    ],
)
def test_it_computes_lag_bytes_from_lsn_text(upstream, replayed, expected):
    assert lag_bytes(upstream, replayed) == expected


def test_it_never_reports_negative_lag():
    # The replica was read a moment after its upstream and has replayed past that point.
    assert lag_bytes("0/3000000", "0/3000060") == 0


@pytest.mark.parametrize(
    ("upstream", "replayed"),
    [
        (None, "0/3000000"),
        ("0/3000000", None),
        ("", "0/3000000"),
        ("0/3000000", "garbage"),
        ("0/3000000; DROP TABLE x", "0/1"),
        ("1/2/3", "0/1"),
        ("0/-1", "0/0"),
        ("０/1", "0/0"),  # full-width digit
    ],
)
def test_it_does_not_invent_lag_from_missing_or_bad_lsns(upstream, replayed):
    assert lag_bytes(upstream, replayed) is None


# --- change detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before_online", "before_role", "online", "role", "changed"),
    [
        (True, Role.PRIMARY, True, Role.PRIMARY, False),
        (True, Role.REPLICA, False, Role.REPLICA, True),
        (False, Role.REPLICA, True, Role.REPLICA, True),
        (True, Role.REPLICA, True, Role.PRIMARY, True),  # promoted behind our back
        (True, Role.PRIMARY, True, Role.REPLICA, True),
        # First observations are not changes.
        (None, Role.UNKNOWN, True, Role.PRIMARY, False),
        (None, Role.REPLICA, True, Role.REPLICA, False),
        (True, Role.UNKNOWN, True, Role.REPLICA, False),
        (None, Role.UNKNOWN, False, Role.UNKNOWN, False),
    ],
)
def test_it_detects_online_and_role_changes(before_online, before_role, online, role, changed):
    assert state_changed(before_online, before_role, online, role) is changed


# --- lagging thresholds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lag", "seconds", "lagging"),
    [
        (0, 0.0, False),
        (16 * MB, 60.0, False),  # at the threshold is not past it
        (16 * MB + 1, 0.0, True),
        (0, 60.5, True),
        (None, None, False),  # not measured is not lagging
        (None, 61.0, True),
        (17 * MB, None, True),
    ],
)
def test_it_applies_lag_thresholds(lag, seconds, lagging):
    assert is_lagging(lag, seconds, max_bytes=16 * MB, max_seconds=60) is lagging


def test_it_reads_thresholds_from_settings(settings):
    settings.HEALTH_LAG_BYTES = 100
    settings.HEALTH_LAG_SECONDS = 5
    assert is_lagging(101, None) and not is_lagging(100, 5.0) and is_lagging(None, 5.1)


@pytest.mark.parametrize(
    ("in_recovery", "status", "expected"),
    [
        (True, "streaming", True),
        (True, "waiting", False),
        (True, "stopping", False),
        (True, None, False),  # no WAL receiver at all
        (True, "unknown", None),  # hidden from the probe role
        (False, None, None),
        (False, "streaming", None),
    ],
)
def test_it_reads_the_wal_receiver_status(in_recovery, status, expected):
    assert streaming(in_recovery, status) is expected


# --- what a sweep writes -------------------------------------------------------------------------


def test_it_records_a_primary_that_answered():
    fields = observe(
        recorded(role=Role.PRIMARY, upstream_id=None), result(False, "0/5000000"), None, NOW
    )
    assert fields["online"] is True and fields["role"] == Role.PRIMARY
    assert fields["last_lsn"] == "0/5000000"
    assert (fields["receive_lsn"], fields["replay_lsn"]) == ("", "")
    assert (fields["lag_bytes"], fields["lag_seconds"], fields["upstream_streaming"]) == (
        None,
        None,
        None,
    )
    assert fields["last_error"] == "" and fields["last_checked"] == NOW
    assert fields["state_changed_at"] == EARLIER  # nothing changed: kept


def test_it_measures_a_replica_against_its_upstream_in_the_same_sweep():
    replica = result(
        True,
        "0/3000000",
        receive_lsn="0/3000060",
        replay_lsn="0/3000000",
        lag_seconds=40.0,
    )
    fields = observe(recorded(), replica, result(False, "0/3C00000"), NOW)
    assert fields["role"] == Role.REPLICA
    assert fields["lag_bytes"] == 0x3C00000 - 0x3000000 == 12 * MB
    assert fields["lag_seconds"] == 40.0
    assert (fields["last_lsn"], fields["receive_lsn"], fields["replay_lsn"]) == (
        "0/3000000",
        "0/3000060",
        "0/3000000",
    )
    assert fields["upstream_streaming"] is True
    assert "upstream" not in fields  # a replica's topology is discovery's to write


def test_it_leaves_lag_bytes_blank_when_the_upstream_did_not_answer():
    replica = result(True, "0/3000000", wal_receiver_status=None)
    fields = observe(recorded(), replica, Unreachable("db1:5432: refused"), NOW)
    assert fields["lag_bytes"] is None
    assert fields["upstream_streaming"] is False
    assert fields["last_lsn"] == "0/3000000"


def test_it_keeps_the_last_lsn_and_lag_of_an_unreachable_instance():
    error = 'db3:5432: connection to server at "db3", port 5432 failed: Connection refused'
    fields = observe(recorded(), Unreachable(error), result(False, "0/9000000"), NOW)
    assert fields["online"] is False
    assert fields["last_error"] == error
    assert fields["last_checked"] == NOW
    assert fields["state_changed_at"] == NOW  # online → offline
    # Nothing it did not say: no role, LSN or lag is written.
    for name in ("role", "last_lsn", "receive_lsn", "replay_lsn", "lag_bytes", "lag_seconds"):
        assert name not in fields
    assert fields["upstream_streaming"] is None


def test_it_does_not_move_state_changed_at_while_an_instance_stays_down():
    fields = observe(recorded(online=False), Unreachable("db3:5432: refused"), None, NOW)
    assert fields["state_changed_at"] == EARLIER


def test_it_truncates_a_long_error_to_the_field():
    fields = observe(recorded(), Unreachable("x" * 2000), None, NOW)
    assert len(fields["last_error"]) == 500


def test_it_records_a_replica_promoted_behind_our_back():
    fields = observe(
        recorded(role=Role.REPLICA, upstream_id=7), result(False, "0/7000000"), None, NOW
    )
    assert fields["role"] == Role.PRIMARY
    assert fields["upstream"] is None and fields["streams_from"] == ""
    assert fields["state_changed_at"] == NOW


# --- classification and badges -------------------------------------------------------------------


def replica(**fields):
    values = dict(
        role=Role.REPLICA,
        online=True,
        upstream_id=1,
        upstream=SimpleNamespace(online=True, address="db1:5432", fenced=False),
        upstream_streaming=True,
        needs_remaster=False,
        lag_bytes=0,
        lag_seconds=0.0,
        state_changed_at=None,
    )
    values.update(fields)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    ("fields", "state", "text"),
    [
        ({}, ReplicationHealth.STREAMING, "streaming"),
        # Under both thresholds (16 MB, 60 s by default).
        ({"lag_bytes": 12 * MB, "lag_seconds": 40.0}, ReplicationHealth.STREAMING, "streaming"),
        (
            {"lag_bytes": 20 * MB, "lag_seconds": 40.0},
            ReplicationHealth.LAGGING,
            "lagging: 20.0 MB, 40 s",
        ),
        ({"lag_seconds": 90.0}, ReplicationHealth.LAGGING, "lagging: 0 bytes, 90 s"),
        ({"upstream_streaming": False}, ReplicationHealth.NOT_STREAMING, "not streaming"),
        (
            {
                "upstream_streaming": False,
                "upstream": SimpleNamespace(online=False, address="a", fenced=False),
            },
            ReplicationHealth.UPSTREAM_GONE,
            "upstream gone",
        ),
        # Left behind by a switchover that could not repoint it: even while offline.
        ({"needs_remaster": True}, ReplicationHealth.UPSTREAM_WRONG, "upstream wrong"),
        (
            {"needs_remaster": True, "online": False},
            ReplicationHealth.UPSTREAM_WRONG,
            "upstream wrong",
        ),
        (
            {"upstream": SimpleNamespace(online=False, address="a", fenced=True)},
            ReplicationHealth.UPSTREAM_WRONG,
            "upstream wrong",
        ),
        ({"online": False}, ReplicationHealth.UNKNOWN, "unknown"),
        ({"online": None}, ReplicationHealth.UNKNOWN, "unknown"),
        ({"upstream_streaming": None}, ReplicationHealth.UNKNOWN, "unknown"),
        ({"upstream_id": None, "upstream": None}, ReplicationHealth.STREAMING, "streaming"),
    ],
)
def test_it_classifies_replicas_and_badges_them(fields, state, text):
    row = replica(**fields)
    assert replication_health(row) == state
    assert f">{text}</strong>" in replication_badge(row)


def test_it_shows_no_replication_badge_on_a_primary():
    primary = replica(role=Role.PRIMARY, upstream_id=None, upstream=None)
    assert replication_health(primary) is None
    assert replication_badge(primary) == ""


def test_it_escapes_what_it_shows():
    row = replica(
        upstream_streaming=False,
        upstream=SimpleNamespace(online=False, address='<b>"x', fenced=False),
    )
    html = replication_badge(row)
    assert "<b>" not in html and "&lt;b&gt;&quot;x" in html


def test_it_marks_a_recent_change_in_orange():
    assert changed_recently(replica(state_changed_at=None), now=NOW) == ""
    assert changed_recently(replica(state_changed_at=NOW - timedelta(minutes=11)), now=NOW) == ""
    mark = changed_recently(replica(state_changed_at=NOW - timedelta(minutes=3)), now=NOW)
    assert "#e65100" in mark and "changed 3 min ago" in mark
    assert "just now" in changed_recently(replica(state_changed_at=NOW), now=NOW)


def herd(total=3, offline=0, unknown=0, lagging=0, broken=0):
    return SimpleNamespace(
        health_total=total,
        health_offline=offline,
        health_unknown=unknown,
        health_lagging=lagging,
        health_broken=broken,
    )


def test_it_summarises_a_herd_from_its_annotated_counts():
    assert ">all 3 online<" in herd_health_summary(herd())
    assert "no instances" in herd_health_summary(herd(total=0))
    summary = herd_health_summary(herd(offline=1, broken=1, lagging=1))
    assert ">1 offline<" in summary and ">1 not streaming<" in summary
    assert ">1 lagging<" in summary and "#e65100" in summary


# --- timeline and herd health ---------------------------------------------------------------


def test_it_records_the_timeline_it_answered_and_keeps_it_when_unreachable():
    fields = observe(recorded(), result(True, "0/3000000", timeline=3), result(False, "0/3"), NOW)
    assert fields["timeline"] == 3
    fields = observe(recorded(), Unreachable("db2:5432: refused"), None, NOW)
    assert "timeline" not in fields


@pytest.mark.parametrize(
    ("counts", "state"),
    [
        ({"total": 0}, HerdHealth.EMPTY),
        ({"online_primaries": 2}, HerdHealth.SPLIT_BRAIN),
        # Worse than anything else wrong with it.
        ({"online_primaries": 2, "offline": 1, "unknown": 1}, HerdHealth.SPLIT_BRAIN),
        ({"online_primaries": 0, "offline": 1}, HerdHealth.NO_PRIMARY),
        # Nothing checked yet: not known, rather than down.
        ({"online_primaries": 0, "unknown": 3}, HerdHealth.UNKNOWN),
        ({"offline": 1, "lagging": 1}, HerdHealth.DEGRADED),
        ({"broken": 1}, HerdHealth.DEGRADED),
        ({"lagging": 1, "unknown": 1}, HerdHealth.LAGGING),
        ({"unknown": 1}, HerdHealth.UNKNOWN),
        ({}, HerdHealth.HEALTHY),
    ],
)
def test_it_rates_a_herd_by_the_worst_that_applies(counts, state):
    values = dict(total=3, offline=0, broken=0, lagging=0, unknown=0, online_primaries=1)
    values.update(counts)
    assert herd_health(**values) == state
