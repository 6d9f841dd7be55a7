"""The pure command layer: quoting that no argument can escape from.

No database, no lab. The shell round trips run the local /bin/sh, which parses a command
line the way a server's login shell does when sshd hands it the line.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instances.commands import Command, quote_argv

# Any text a DBA could type or a file system could hold, except NUL, which no argument
# of a C program can carry (quote_argv rejects it; tested below).
# Lone surrogates cannot be sent over SSH at all; quote_argv rejects them (tested below).
TEXT = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
)

HOSTILE = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "${HOME}",
    "$HOME",
    "'",
    '"',
    'it\'s "quoted"',
    "a\nb",
    "\n",
    "*",
    "/etc/*",
    "?",
    "[a-z]*",
    "~",
    "~root",
    "-rf",
    "--help",
    "-",
    "",
    " ",
    "\t",
    "a b  c",
    "x=y",
    "&& true",
    "| cat",
    "> /tmp/owned",
    "< /etc/passwd",
    "#comment",
    "!",
    "\\",
    "\\n",
    "{a,b}",
    "é ☃ 漢字",
    "\x01\x1b[31m",
]


def shell_argv(argv: list[str]) -> list[str]:
    """The arguments a program receives when /bin/sh runs `printf '%s\\0' <argv quoted>`."""
    line = quote_argv(["printf", "%s\\0", *argv])
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=True).stdout
    # printf reuses its format for every argument; with none it prints one empty field.
    fields = out.decode("utf-8", "surrogateescape").split("\x00")[:-1]
    return fields if argv else []


# The first word names the program, so it must not be empty; the rest may be anything.
ARGV = st.builds(lambda first, rest: [first, *rest], TEXT.filter(bool), st.lists(TEXT))


@given(ARGV)
def test_it_round_trips_any_text_through_shlex(argv):
    assert shlex.split(quote_argv(argv)) == argv


@settings(max_examples=60, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_it_round_trips_any_text_through_a_real_shell(argv):
    assert shell_argv(argv) == argv


@pytest.mark.parametrize("value", HOSTILE)
def test_it_passes_each_hostile_value_as_one_literal_argument(value):
    assert shell_argv([value, "after"]) == [value, "after"]


def test_it_passes_all_hostile_values_together():
    assert shell_argv(HOSTILE) == HOSTILE


@pytest.mark.parametrize("word", ["A=b", "PATH=/tmp", "if", "then", "until", "while", "!", "{"])
def test_it_runs_a_first_word_as_a_program_name_not_as_shell_syntax(word):
    # An assignment or a reserved word in command position would be shell syntax; quoted,
    # the shell looks for a program of that literal name and reports it missing (127).
    result = subprocess.run(["/bin/sh", "-c", quote_argv([word])], capture_output=True)
    assert result.returncode == 127, result


def test_it_leaves_plain_arguments_readable():
    assert quote_argv(["pg_ctl", "-D", "/var/lib/pg", "promote"]) == "pg_ctl -D /var/lib/pg promote"
    assert quote_argv(["echo", "a b", ""]) == "echo 'a b' ''"


@pytest.mark.parametrize("value", ["a\x00b", "\x00"])
def test_it_rejects_nul_bytes(value):
    with pytest.raises(ValueError, match="NUL"):
        quote_argv(["echo", value])


def test_it_rejects_an_empty_argv():
    with pytest.raises(ValueError, match="empty"):
        quote_argv([])
    with pytest.raises(ValueError, match="empty"):
        quote_argv([""])


@pytest.mark.parametrize("bad", [["echo", 1], ["echo", None], ["echo", b"bytes"]])
def test_it_rejects_non_str_arguments(bad):
    with pytest.raises(ValueError, match="must be a str"):
        quote_argv(bad)


def test_it_rejects_a_bare_string():
    with pytest.raises(ValueError, match="single string"):
        quote_argv("rm -rf /")


def test_it_rejects_lone_surrogates():
    with pytest.raises(ValueError, match="surrogate"):
        quote_argv(["echo", "\udc80"])


def test_it_quotes_command_environment_values():
    command = Command(["sh", "-c", 'printf "%s" "$PGAPPNAME"'], env={"PGAPPNAME": "$(id) x"})
    assert command.line() == "PGAPPNAME='$(id) x' sh -c 'printf \"%s\" \"$PGAPPNAME\"'"
    out = subprocess.run(["/bin/sh", "-c", command.line()], capture_output=True, check=True)
    assert out.stdout == b"$(id) x"


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), TEXT, max_size=3))
def test_it_round_trips_environment_assignments_through_shlex(env):
    env = {name: value for name, value in env.items() if not name.startswith(("PASS", "TOK"))}
    try:
        command = Command(["env"], env=env)
    except ValueError as exc:
        assert "secret" in str(exc)
        return
    assert shlex.split(command.line()) == [f"{k}={v}" for k, v in env.items()] + ["env"]


@pytest.mark.parametrize("name", ["PGPASSWORD", "db_password", "API_TOKEN", "MY_SECRET"])
def test_it_refuses_secret_looking_environment_variables(name):
    with pytest.raises(ValueError, match="stdin"):
        Command(["psql"], env={name: "hunter2"})


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "", "$(id)"])
def test_it_refuses_invalid_environment_names(name):
    with pytest.raises(ValueError, match="not a valid name"):
        Command(["env"], env={name: "x"})


def test_it_validates_command_arguments_when_built():
    with pytest.raises(ValueError, match="NUL"):
        Command(["echo", "a\x00"])
