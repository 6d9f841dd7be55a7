"""Connection strings and configuration values (instances.conninfo): pure, hostile input.

The two readers below follow the documented rules, independently of the writers:
libpq's conninfo (a value in single quotes, `\\` escaping the next character) and
PostgreSQL's configuration file lexer (a string in single quotes; `''` is a quote; `\\`
escapes b, f, n, r, t, octal digits, or stands for the next character itself).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instances import conninfo

TEXT = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
)
ONE_LINE = st.text(
    st.characters(blacklist_characters="\x00\n\r", blacklist_categories=("Cs",)), max_size=40
)
KEYS = st.sampled_from(["host", "port", "user", "sslmode", "application_name", "dbname"])
HOSTILE = ["", " ", "a b", "'", "\\", "\\'", "''", "x' host=evil", "$(id)", "a\\b'c d"]


def read_config_value(text: str) -> str:
    """A postgresql.conf string value as guc-file.l and GUC_scanstr read it."""
    match = re.fullmatch(r"'((?:[^'\\\n]|\\.|'')*)'", text)
    assert match, f"the configuration lexer would not read {text!r} as one string"
    body, out, i = match.group(1), [], 0
    escapes = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    while i < len(body):
        char = body[i]
        if char == "\\":
            nxt = body[i + 1]
            if nxt in escapes:
                out.append(escapes[nxt])
                i += 2
            elif nxt in "01234567":
                digits = re.match(r"[0-7]{1,3}", body[i + 1 :]).group(0)
                out.append(chr(int(digits, 8)))
                i += 1 + len(digits)
            else:
                out.append(nxt)
                i += 2
        elif char == "'":
            out.append("'")  # '' inside the string
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


@given(st.dictionaries(KEYS, TEXT, max_size=6))
def test_it_writes_conninfo_that_libpq_reads_back_exactly(options):
    assert conninfo.parse_conninfo(conninfo.format_conninfo(options)) == options


@pytest.mark.parametrize("value", HOSTILE)
def test_it_keeps_a_hostile_value_inside_its_option(value):
    text = conninfo.format_conninfo({"user": value, "host": "db1"})
    assert conninfo.parse_conninfo(text) == {"user": value, "host": "db1"}


def test_it_refuses_an_option_name_that_is_not_one():
    for bad in ("host port", "Host", "a=b", "", "x'"):
        with pytest.raises(ValueError, match="option name"):
            conninfo.format_conninfo({bad: "1"})


@given(ONE_LINE)
def test_it_writes_configuration_values_the_server_reads_back_exactly(value):
    assert read_config_value(conninfo.config_value(value)) == value


@pytest.mark.parametrize("value", HOSTILE + ["user='x' port=1 \\n"])
def test_it_writes_a_primary_conninfo_line_that_reads_back_to_the_conninfo(value):
    text = conninfo.format_conninfo({"host": "db1", "port": 5432, "user": value})
    line = conninfo.config_line("primary_conninfo", text)
    name, _, quoted = line.partition(" = ")
    assert name == "primary_conninfo"
    assert conninfo.parse_conninfo(read_config_value(quoted))["user"] == value


def test_it_refuses_values_and_names_that_would_break_the_file():
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            conninfo.config_value(bad)
    for bad in ("primary conninfo", "x=1", "", "PORT", "a;b"):
        with pytest.raises(ValueError):
            conninfo.config_line(bad, "1")


def test_it_moves_a_replica_keeping_its_options_and_dropping_secrets():
    template = "host=old port=5433 user=repl sslmode=require password=s3cret passfile=/x/pgpass"
    text = conninfo.primary_conninfo(
        host="127.0.1.4", port=5432, user="replicator", application="orders_srv4", template=template
    )
    assert conninfo.parse_conninfo(text) == {
        "host": "127.0.1.4",
        "port": "5432",
        "user": "repl",
        "sslmode": "require",
        "application_name": "orders_srv4",
    }
    assert "s3cret" not in text and "pgpass" not in text
    fresh = conninfo.primary_conninfo(host="db1", port=5432, user="replicator", application="a")
    assert conninfo.parse_conninfo(fresh)["user"] == "replicator"


@given(TEXT, TEXT)
def test_it_names_a_replica_with_safe_characters_only(herd, host):
    assert re.fullmatch(r"[A-Za-z0-9_]*_[A-Za-z0-9_]*", conninfo.application_name(herd, host))


def test_it_reads_uris_for_host_and_port():
    assert conninfo.parse_conninfo("postgresql://repl@db1:5433/postgres") == {
        "host": "db1",
        "port": "5433",
    }
