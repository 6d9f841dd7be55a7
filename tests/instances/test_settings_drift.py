"""The gathered configuration's pure logic: what to write, drift between members, and the
fleet-wide search's `name = value` queries, with hostile input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from instances.settings_drift import (
    MAX_NAME,
    MAX_VALUE,
    PER_MEMBER,
    Seen,
    changes,
    drift,
    parse_query,
    parse_rows,
)


def seen(name: str, setting: str, unit: str = "", shown: str | None = None, **kw) -> Seen:
    fields = {"source": "configuration file", "pending_restart": False, **kw}
    return Seen(name, setting, unit, shown=shown if shown is not None else setting, **fields)


def test_it_parses_rows_and_bounds_odd_values():
    rows = parse_rows(
        [
            ("shared_buffers", "4096", "8kB", "configuration file", False, "32MB"),
            ("x" * 500, "v" * 10_000, None, None, None, None),
        ]
    )
    assert rows["shared_buffers"] == Seen(
        "shared_buffers", "4096", "8kB", "configuration file", False, "32MB"
    )
    [odd] = [r for n, r in rows.items() if n != "shared_buffers"]
    assert len(odd.name) == MAX_NAME and len(odd.setting) == MAX_VALUE
    assert (odd.unit, odd.source, odd.pending_restart, odd.shown) == ("", "", False, "")


def test_it_writes_only_what_changed_and_deletes_what_went():
    old = {"a": seen("a", "1"), "b": seen("b", "2"), "c": seen("c", "3")}
    new = {"a": seen("a", "1"), "b": seen("b", "2", pending_restart=True), "d": seen("d", "4")}
    write, gone = changes(old, new)
    assert [s.name for s in write] == ["b", "d"]
    assert gone == ["c"]
    assert changes(new, new) == ([], [])


def test_it_finds_drift_against_the_primary():
    primary = {
        "work_mem": seen("work_mem", "4096", "kB", "4MB"),
        "max_connections": seen("mc", "100"),
    }
    same = dict(primary)
    other = {
        "work_mem": seen("work_mem", "8192", "kB", "8MB"),
        "max_connections": seen("mc", "100"),
    }
    [row] = drift([primary, same, other])
    assert row.name == "work_mem"
    assert row.values == ("4MB", "4MB", "8MB")
    assert row.differs == (False, False, True)


def test_it_counts_a_missing_row_as_the_default_and_the_odd_primary_out():
    primary = {"jit": seen("jit", "off")}
    [row] = drift([primary, {}, {}])
    assert row.values == ("off", None, None)
    assert row.differs == (False, True, True)


def test_it_compares_base_units_not_show_text():
    # SHOW rounds: two members with the same setting in its base unit are the same.
    a = {"max_wal_size": seen("max_wal_size", "1024", "MB", "1GB")}
    b = {"max_wal_size": seen("max_wal_size", "1024", "MB", "1024MB")}
    assert drift([a, b]) == []
    c = {"max_wal_size": seen("max_wal_size", "1025", "MB", "1025MB")}
    assert [d.name for d in drift([a, c])] == ["max_wal_size"]


def test_it_flags_a_restart_pending_on_some_members_only():
    # Written on one member, not yet in effect: the same value now, different after a
    # restart. On every member alike, it is no drift.
    a = {"max_connections": seen("max_connections", "100")}
    b = {"max_connections": seen("max_connections", "100", pending_restart=True)}
    [row] = drift([a, b])
    assert row.pending == (False, True) and row.differs == (False, True)
    assert drift([b, b]) == []


def test_it_ignores_each_members_own_settings():
    a = {name: seen(name, "a") for name in PER_MEMBER}
    b = {name: seen(name, "b") for name in PER_MEMBER}
    assert drift([a, b]) == []


def test_it_needs_two_members_and_survives_a_bad_reference():
    assert drift([]) == [] and drift([{"a": seen("a", "1")}]) == []
    rows = drift([{"a": seen("a", "1")}, {"a": seen("a", "2")}], reference=7)
    assert rows[0].differs == (False, True)


def test_it_keeps_hostile_names_and_values_as_data():
    evil = "<script>'; DROP TABLE x; --"
    rows = drift([{evil: seen(evil, evil)}, {}])
    assert rows[0].name == evil and rows[0].values == (evil, None)


def test_it_parses_setting_queries():
    assert parse_query("max_connections = 100") == parse_query("MAX_CONNECTIONS=100")
    q = parse_query("max_connections = 100")
    assert (q.name, q.value, q.negate) == ("max_connections", "100", False)
    q = parse_query("work_mem != '4MB'")
    assert (q.name, q.value, q.negate) == ("work_mem", "4MB", True)
    assert parse_query("work_mem <> 4MB").negate
    q = parse_query('log_line_prefix = "%m [%p] "')
    assert q.value == "%m [%p] "
    q = parse_query("pg_stat_statements.max = 5000")
    assert q.name == "pg_stat_statements.max"


def test_it_leaves_plain_searches_alone():
    for text in ("", "orders", "max_connections", "max_connections =", "= 100", "1 = 1x", "'a'=b"):
        assert parse_query(text) is None, text


@given(st.text(max_size=200))
def test_it_never_crashes_on_any_query(text):
    query = parse_query(text)
    if query is not None:
        assert query.value and query.name and "=" not in query.name
