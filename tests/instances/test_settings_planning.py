"""Configuration changes checked against pg_settings rows (instances.settings_planning)."""

from __future__ import annotations

import pytest

from instances.settings_planning import SettingRow, check, check_name

MAX_CONNECTIONS = SettingRow("max_connections", "100", None, "integer", "postmaster", "1", "262143")
SHARED_BUFFERS = SettingRow(
    "shared_buffers", "16384", "8kB", "integer", "postmaster", "16", "1073741823"
)
WORK_MEM = SettingRow("work_mem", "4096", "kB", "integer", "user", "64", "2147483647")
TIMEOUT = SettingRow("statement_timeout", "0", "ms", "integer", "user", "0", "2147483647")
RANDOM_PAGE_COST = SettingRow("random_page_cost", "4", None, "real", "user", "0", "1.79769e+308")
LOG_MIN = SettingRow(
    "log_min_messages",
    "warning",
    None,
    "enum",
    "superuser",
    enumvals=("debug5", "info", "notice", "warning", "error", "log", "fatal", "panic"),
)
HOT = SettingRow("hot_standby_feedback", "off", None, "bool", "sighup")
BLOCK = SettingRow("block_size", "8192", None, "integer", "internal", "8192", "8192")
APP = SettingRow("application_name", "", None, "string", "user")


@pytest.mark.parametrize(
    "row, value, restart, written",
    [
        (MAX_CONNECTIONS, "120", True, "120"),
        (SHARED_BUFFERS, "256MB", True, "256MB"),
        (SHARED_BUFFERS, "1 GB", True, "1 GB"),
        (WORK_MEM, "8MB", False, "8MB"),
        (TIMEOUT, "5min", False, "5min"),
        (TIMEOUT, "1500", False, "1500"),
        (RANDOM_PAGE_COST, "1.1", False, "1.1"),
        (LOG_MIN, "INFO", False, "info"),
        (HOT, "Yes", False, "on"),
        (HOT, "0", False, "off"),
        (APP, "it's; DROP TABLE x", False, "it's; DROP TABLE x"),
    ],
)
def test_accepted_values_say_reload_or_restart(row, value, restart, written):
    verdict = check(row, row.name, value)
    assert verdict.ok, verdict.reason
    assert verdict.restart is restart and verdict.value == written
    assert verdict.reason == ("needs a restart" if restart else "a reload is enough")


@pytest.mark.parametrize(
    "row, value, says",
    [
        (None, "1", "is not a parameter of this server"),
        (MAX_CONNECTIONS, "0", "must be between 1 and 262143"),
        (MAX_CONNECTIONS, "lots", "is not a number"),
        (MAX_CONNECTIONS, "10MB", "takes no unit"),
        (SHARED_BUFFERS, "64kB", "must be between 16 and 1073741823 8kB"),
        (SHARED_BUFFERS, "5min", "is not a memory unit"),
        (WORK_MEM, "8Mb", "is not a memory unit"),
        (TIMEOUT, "-1", "must be between 0"),
        (TIMEOUT, "10MB", "is not a time unit"),
        (LOG_MIN, "loud", "is one of debug5, info"),
        (HOT, "maybe", "is on or off"),
        (BLOCK, "16384", "is fixed"),
        (APP, "a\x00b", "NUL"),
    ],
)
def test_bad_values_are_refused_with_the_reason(row, value, says):
    verdict = check(row, "x" if row is None else row.name, value)
    assert not verdict.ok and says in verdict.reason, verdict.reason


@pytest.mark.parametrize(
    "name", ["", "1abc", "work-mem", "a;b", "x" * 64, "a.b.c", "Robert'); DROP"]
)
def test_hostile_names_are_refused(name):
    with pytest.raises(ValueError):
        check_name(name)


def test_names_are_lowered_and_extension_prefixes_kept():
    assert check_name(" Work_Mem ") == "work_mem"
    assert check_name("pg_stat_statements.max") == "pg_stat_statements.max"
