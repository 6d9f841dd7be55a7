"""Site drill pre-flight gates (herds.site_planning): pure logic."""

from __future__ import annotations

from herds.planning import Member, Snapshot
from herds.site_planning import Facts, gates, major

MB = 1024 * 1024


def snap(*, target_replay=100 * MB, primary_lsn=100 * MB, answering=True, vhost="orders"):
    primary = Member(1, "orders on srv1", "srv1", True, False, current_lsn=primary_lsn)
    dr = Member(
        2,
        "orders on srv4",
        "srv4",
        answering,
        True if answering else None,
        receive_lsn=target_replay,
        replay_lsn=target_replay,
        dr_candidate=True,
        environment="dr",
    )
    return Snapshot("orders", primary, (dr,), vhost=vhost)


def facts(**overrides):
    base = dict(
        target_id=2,
        target_why="its acknowledged DR copy",
        versions={1: 150004, 2: 150004},
        receiver={2: "streaming"},
        busy=(),
        dns_error=None,
        dns_seconds=0.003,
    )
    return Facts(**{**base, **overrides})


def by_name(result):
    return {g.name: g for g in result}


def test_all_pass():
    result = gates(snap(), facts(), max_lag_bytes=16 * MB)
    assert [g.name for g in result] == ["target", "streams", "version", "DNS", "no job"]
    assert all(g.ok for g in result), result
    assert "0 bytes behind" in by_name(result)["streams"].detail


def test_lag_over_the_limit_fails():
    result = by_name(gates(snap(target_replay=60 * MB), facts(), max_lag_bytes=16 * MB))
    assert not result["streams"].ok and "40.0 MB behind" in result["streams"].detail


def test_not_streaming_fails():
    result = by_name(gates(snap(), facts(receiver={2: "stopping"}), max_lag_bytes=MB))
    assert not result["streams"].ok and "stopping" in result["streams"].detail
    result = by_name(gates(snap(), facts(receiver={}), max_lag_bytes=MB))
    assert "no WAL receiver" in result["streams"].detail


def test_silent_target_fails():
    result = by_name(gates(snap(answering=False), facts(versions={1: 150004}), max_lag_bytes=MB))
    assert not result["streams"].ok and "does not answer" in result["streams"].detail
    assert not result["version"].ok


def test_major_version_mismatch_fails():
    result = by_name(gates(snap(), facts(versions={1: 150004, 2: 160001}), max_lag_bytes=MB))
    assert not result["version"].ok and result["version"].detail == "primary 15, target 16"
    assert major(90624) == 9 and major(None) is None


def test_dns_refused_fails_but_no_vhost_passes():
    result = by_name(gates(snap(), facts(dns_error="NOTAUTH"), max_lag_bytes=MB))
    assert not result["DNS"].ok and result["DNS"].detail == "NOTAUTH"
    result = by_name(gates(snap(vhost=""), facts(dns_error="NOTAUTH"), max_lag_bytes=MB))
    assert result["DNS"].ok


def test_busy_herd_fails():
    result = by_name(gates(snap(), facts(busy=["#7 rebuild replica (running)"]), max_lag_bytes=MB))
    assert not result["no job"].ok and "#7" in result["no job"].detail


def test_no_target_fails_every_dependent_gate():
    result = by_name(
        gates(snap(), facts(target_id=None, target_why="no DR copy acknowledged"), max_lag_bytes=MB)
    )
    assert not result["target"].ok and result["target"].detail == "no DR copy acknowledged"
    assert not result["streams"].ok and not result["version"].ok


def test_a_target_that_is_already_the_primary_says_so():
    result = by_name(
        gates(snap(), facts(target_id=1, target_why="its primary before"), max_lag_bytes=MB)
    )
    assert not result["target"].ok
    assert result["target"].detail == (
        "orders on srv1 is already the primary (its primary before): nothing to move"
    )
