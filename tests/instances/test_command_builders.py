"""The COMMANDS presets and the builder: pure, with hostile values."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instances import commands

VALUES = {
    "version": 15,
    "cluster": "orders",
    "data_dir": "/var/lib/postgresql/15/orders",
    "port": 5432,
    "bindir": "/usr/lib/postgresql/15/bin",
    "timeout": 90,
    "mode": "fast",
}


@pytest.mark.parametrize("preset", sorted(commands.PRESETS))
@pytest.mark.parametrize("action", ["start", "stop", "restart", "reload", "promote", "status"])
def test_it_builds_every_action_of_every_preset(preset, action):
    argv = commands.build(commands.command_templates(preset)[action], VALUES)
    assert all("{" not in word for word in argv)
    assert shlex.split(commands.quote_argv(argv)) == argv


def test_it_builds_the_debian_stop_command():
    template = commands.command_templates("debian")["stop"]
    assert commands.build(template, {**VALUES, "mode": "immediate"}) == [
        "pg_ctlcluster",
        "--mode",
        "immediate",
        "15",
        "orders",
        "stop",
    ]


def test_it_builds_the_pg_ctl_start_command_with_a_log_file():
    argv = commands.build(commands.command_templates("pg_ctl")["start"], VALUES)
    assert argv == [
        "/usr/lib/postgresql/15/bin/pg_ctl",
        "-D",
        "/var/lib/postgresql/15/orders",
        "-l",
        "/var/lib/postgresql/15/orders/elephaas-start.log",
        "-w",
        "-t",
        "90",
        "start",
    ]


HOSTILE = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=30,
)


@given(cluster=HOSTILE, data_dir=HOSTILE)
def test_it_keeps_each_hostile_value_inside_its_own_word(cluster, data_dir):
    for preset in commands.PRESETS:
        templates = commands.command_templates(preset)
        argv = commands.build(
            templates["stop"], {**VALUES, "cluster": cluster, "data_dir": data_dir}
        )
        assert len(argv) == len(templates["stop"])
        assert shlex.split(commands.quote_argv(argv)) == argv


@pytest.mark.parametrize("value", ["x; rm -rf /", "$(id)", "`id`", "a b", "'q'", "a\nb"])
def test_it_passes_shell_syntax_through_as_a_literal_argument(value):
    argv = commands.build(
        ["pg_ctlcluster", "{version}", "{cluster}", "start"], {**VALUES, "cluster": value}
    )
    assert argv[2] == value
    assert shlex.split(commands.quote_argv(argv))[2] == value


def test_it_refuses_an_unknown_placeholder_naming_it():
    with pytest.raises(commands.CommandTemplateError, match=r"\{clutser\}"):
        commands.build(["pg_ctlcluster", "{clutser}"], VALUES)


def test_it_refuses_a_nul_in_a_value():
    with pytest.raises(ValueError, match="NUL"):
        commands.build(["echo", "{cluster}"], {**VALUES, "cluster": "a\x00b"})


def test_it_applies_overrides_and_refuses_bad_ones():
    templates = commands.command_templates(
        "debian", {"start": ["sudo", "systemctl", "start", "postgresql@{version}-{cluster}"]}
    )
    assert commands.build(templates["start"], VALUES) == [
        "sudo",
        "systemctl",
        "start",
        "postgresql@15-orders",
    ]
    assert templates["stop"][0] == "pg_ctlcluster"
    with pytest.raises(commands.CommandTemplateError, match="non-empty list"):
        commands.command_templates("debian", {"start": "pg_ctl start"})
    with pytest.raises(commands.CommandTemplateError, match="unknown COMMANDS preset"):
        commands.command_templates("systemd")
