"""instances.commands, the pure command layer: quoting that no argument can escape from,
the COMMANDS presets, the PostgreSQL tool command lines and the shell snippets.

No database, no lab. The shell round trips run the local /bin/sh, which parses a command
line the way a server's login shell does when sshd hands it the line; each snippet runs in
a temporary folder whose name is hostile, and must work on that literal path only.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instances import commands, conninfo
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


# --- the COMMANDS presets and the builder ---------------------------------------------------


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


HOSTILE_TEXT = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=30,
)


@given(cluster=HOSTILE_TEXT, data_dir=HOSTILE_TEXT)
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


# --- tool command lines and shell snippets -----------------------------------------------


# File names a DBA or an attacker could put in a data directory path (no NUL, no "/").
NAME = st.text(
    st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
).filter(lambda n: n not in (".", ".."))
HOSTILE_NAMES = [
    "a b",
    "$(touch owned)",
    "`touch owned`",
    "x;touch owned",
    "'q'",
    '"d"',
    "-rf",
    "*",
]


def run(argv: list[str], stdin: str | None = None, cwd: Path | None = None):
    line = commands.quote_argv(argv)
    return subprocess.run(
        ["/bin/sh", "-c", line],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def data_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name / "15" / "main"
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_it_writes_the_standby_configuration_into_the_literal_directory(tmp_path, name):
    pgdata = data_dir(tmp_path, name)
    (pgdata / "postgresql.auto.conf").write_text(
        "work_mem = '8MB'\nprimary_conninfo = 'host=old'\n  primary_conninfo='host=older'\n"
    )
    value = conninfo.format_conninfo({"host": "db1", "user": name})
    line = conninfo.config_line("primary_conninfo", value)
    done = run(commands.write_standby_config(str(pgdata), line), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (pgdata / "postgresql.auto.conf").read_text() == f"work_mem = '8MB'\n{line}\n"
    assert (pgdata / "standby.signal").exists()
    assert not (tmp_path / "owned").exists()


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAME)
def test_it_keeps_files_aside_and_puts_them_back_whatever_the_path(tmp_path_factory, name):
    root = tmp_path_factory.mktemp("keep")
    pgdata = data_dir(root, name)
    kept = Path(f"{pgdata}.elephaas-kept")
    (pgdata / "pg_hba.conf").write_text("host all all 0/0 reject\n")
    assert (
        run(commands.keep_aside(str(pgdata), str(kept), ["pg_hba.conf", "absent.conf"])).returncode
        == 0
    )
    (pgdata / "pg_hba.conf").write_text("from the upstream\n")
    # A retry keeps what was set aside the first time.
    assert run(commands.keep_aside(str(pgdata), str(kept), ["pg_hba.conf"])).returncode == 0
    done = run(commands.put_back(str(pgdata), str(kept)))
    assert done.returncode == 0, done.stderr
    assert (pgdata / "pg_hba.conf").read_text() == "host all all 0/0 reject\n"
    assert not kept.exists()


def test_it_refuses_to_keep_aside_a_path_instead_of_a_file_name():
    for bad in ("../etc/passwd", "conf.d/x", "", ".", ".."):
        with pytest.raises(ValueError):
            commands.keep_aside("/d", "/d.kept", [bad])


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_it_empties_only_the_literal_data_directory(tmp_path, name):
    pgdata = data_dir(tmp_path, name)
    (pgdata / "base").mkdir()
    (pgdata / "base" / "1").write_text("x")
    (pgdata / ".hidden").write_text("x")
    neighbour = tmp_path / "neighbour"
    neighbour.write_text("keep me")
    assert run(commands.empty_data_dir(str(pgdata)), cwd=tmp_path).returncode == 0
    assert pgdata.is_dir() and not any(pgdata.iterdir())
    assert oct(pgdata.stat().st_mode & 0o777) == "0o700"
    assert neighbour.read_text() == "keep me"


def test_it_clears_what_rsync_leaves_out_and_nothing_else(tmp_path):
    pgdata = data_dir(tmp_path, "a b")
    for sub in ("pg_wal", "pg_replslot", "base"):
        (pgdata / sub).mkdir()
        (pgdata / sub / "f").write_text("x")
    for name in ("postmaster.pid", "backup_label", "standby.signal", "PG_VERSION"):
        (pgdata / name).write_text("x")
    assert run(commands.clean_for_rsync(str(pgdata))).returncode == 0
    assert sorted(p.name for p in pgdata.iterdir()) == [
        "PG_VERSION",
        "base",
        "pg_replslot",
        "pg_wal",
    ]
    assert not any((pgdata / "pg_wal").iterdir()) and (pgdata / "base" / "f").exists()


def test_it_logs_a_command_and_counts_vanished_files_as_success(tmp_path):
    log = tmp_path / "a b.log"
    done = run(commands.logged(str(log), ["sh", "-c", 'echo "$1"; exit 24', "sh", "$(id)"]))
    assert done.returncode == 0 and log.read_text() == "$(id)\n"
    assert run(commands.logged(str(log), ["sh", "-c", "exit 23"])).returncode == 23


def test_it_writes_stdin_to_a_private_file(tmp_path):
    target = tmp_path / "x; y" / "backup_label"
    target.parent.mkdir()
    secret = "START WAL LOCATION: 0/2000028\n'$(id)'\n"
    assert run(commands.write_file(str(target)), stdin=secret).returncode == 0
    assert target.read_text() == secret
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_it_lifts_a_held_start_conf_and_only_that(tmp_path):
    start_conf = tmp_path / "a b" / "start.conf"
    start_conf.parent.mkdir()
    start_conf.write_text("manual\n")
    done = run(commands.start_conf_auto(str(start_conf)))
    assert start_conf.read_text() == "auto\n" and "manual -> auto" in done.stdout
    start_conf.write_text("disabled\n")
    run(commands.start_conf_auto(str(start_conf)))
    assert start_conf.read_text() == "disabled\n"  # only a fence's "manual" is lifted


def test_it_writes_an_instance_conf_d_file(tmp_path):
    conf = tmp_path / "$(id)"
    lines = [conninfo.config_line("listen_addresses", "127.0.1.2"), "port = 5433"]
    assert run(commands.write_conf_d(str(conf), "zz-elephaas-instance.conf", lines)).returncode == 0
    text = (conf / "conf.d" / "zz-elephaas-instance.conf").read_text().splitlines()
    assert text[1:] == ["listen_addresses = '127.0.1.2'", "port = 5433"]
    with pytest.raises(ValueError):
        commands.write_conf_d(str(conf), "../postgresql.conf", lines)
    with pytest.raises(ValueError):
        commands.write_conf_d(str(conf), "x.conf", ["port = 1\nlisten_addresses = '*'"])


def test_it_replaces_settings_in_postgresql_auto_conf(tmp_path):
    pgdata = data_dir(tmp_path, "a'b")
    (pgdata / "postgresql.auto.conf").write_text("port = 5432\nwork_mem = '4MB'\n")
    lines = [conninfo.config_line("listen_addresses", "127.0.1.3"), "port = 5434"]
    assert run(commands.set_auto_conf(str(pgdata), lines)).returncode == 0
    assert (pgdata / "postgresql.auto.conf").read_text().splitlines() == [
        "work_mem = '4MB'",
        "listen_addresses = '127.0.1.3'",
        "port = 5434",
    ]


def test_it_reports_postmasters_from_their_pids_only():
    argv = commands.postmaster_report([os.getpid(), 1])
    assert argv[:3] == ["sh", "-c", commands._POSTMASTER_REPORT] and argv[4:] == [
        str(os.getpid()),
        "1",
    ]
    with pytest.raises(ValueError):
        commands.postmaster_report(["1; id"])


@given(data_dir=NAME, source=st.text(max_size=40).filter(lambda s: "\x00" not in s))
def test_it_builds_tool_command_lines_with_each_value_in_one_word(data_dir, source):
    path = f"/srv/{data_dir}"
    for argv, value in (
        (commands.pg_controldata("/usr/lib/postgresql/15/bin", path), path),
        (commands.pg_rewind("/usr/lib/postgresql/15/bin/", path, source), source),
        (commands.initdb("/usr/lib/postgresql/15/bin", path), path),
        (commands.pg_createcluster(15, data_dir, 5432, path), path),
    ):
        try:
            line = commands.quote_argv(argv)
        except ValueError:
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in value)
            continue
        assert value in argv
        assert shlex.split(line) == argv


def test_it_builds_pg_basebackup_with_its_label_and_rate():
    argv = commands.pg_basebackup(
        "/b",
        "/d",
        host="127.0.1.1",
        port=5432,
        user="replicator",
        label="elephaas job 7",
        max_rate_kb=512,
    )
    assert argv[0] == "/b/pg_basebackup" and argv[-1] == "--max-rate=512k"
    assert argv[argv.index("--label") + 1] == "elephaas job 7"
    assert "--no-password" in argv and not any("password=" in a for a in argv)


def test_it_refuses_rsync_specs_that_could_be_read_as_options():
    assert (
        commands.remote_path("postgres", "127.0.1.2", "/var/lib/x")
        == "postgres@127.0.1.2:/var/lib/x/"
    )
    for user, host in (
        ("-e sh", "h"),
        ("u", "-oProxyCommand=id"),
        ("u@v", "h"),
        ("u", "h:x"),
        ("", "h"),
    ):
        with pytest.raises(ValueError):
            commands.remote_path(user, host, "/x")


def test_a_fence_marks_the_data_directory_and_holds_start_conf_until_lifted(
    tmp_path,
):
    start_conf = tmp_path / "c 1" / "start.conf"
    start_conf.parent.mkdir()
    start_conf.write_text("auto\n")
    marker = tmp_path / "main; $(id).elephaas-fenced"
    done = run(commands.fence(str(marker), 42, str(start_conf)))
    assert done.returncode == 0 and "start.conf: manual" in done.stdout
    assert marker.read_text() == "fenced: job 42\n" and start_conf.read_text() == "manual\n"
    run(commands.fence(str(marker), 43, str(start_conf)))
    assert marker.read_text() == "fenced: job 42\n"  # the first fence's record is kept
    done = run(commands.unfence(str(marker)))
    assert not marker.exists() and "fence marker removed" in done.stdout
    assert run(commands.start_conf_auto(str(start_conf))).returncode == 0
    assert start_conf.read_text() == "auto\n"
    # The pg_ctl preset has no start.conf: the marker alone.
    assert run(commands.fence(str(marker), 44, None)).returncode == 0 and marker.exists()
    assert run(commands.unfence(str(marker))).returncode == 0 and not marker.exists()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_an_action_guarded_by_the_fence_runs_only_while_no_marker_is_there(tmp_path, name):
    marker = tmp_path / f"{name}.elephaas-fenced"
    action = ["printf", "%s|", name, "$(id)", "-m fast"]
    done = run(commands.unless_fenced(str(marker), action), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"{name}|$(id)|-m fast|")
    assert run(commands.fence(str(marker), 42, None), cwd=tmp_path).returncode == 0
    done = run(commands.unless_fenced(str(marker), action), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (commands.FENCED_EXIT, "")  # not run
    assert done.stderr == f"{commands.FENCED_SAYS} fenced: job 42 ({marker})\n"
    assert not (tmp_path / "owned").exists()


def test_a_wal_salvage_copies_only_the_named_segments(tmp_path):
    source, target = tmp_path / "old wal", tmp_path / "new wal"
    source.mkdir()
    target.mkdir()
    names = ["000000010000000000000003", "000000010000000000000004"]
    for name in [*names, "000000010000000000000005", "000000010000000000000002"]:
        (source / name).write_text(f"full {name}")
    (target / names[0]).write_text("half")  # the segment its WAL receiver was filling
    argv = commands.rsync_wal("ssh -p 22", f"{source}/", names, str(target))
    # Run it locally: the same argv with the local source path.
    assert run(argv).returncode == 0
    assert sorted(p.name for p in target.iterdir()) == names
    assert (target / names[0]).read_text() == f"full {names[0]}"
    for bad in ([], ["../../etc/passwd"], ["000000010000000000000003 --delete"], ["*"]):
        with pytest.raises(ValueError):
            commands.rsync_wal("ssh", "u@h:/x/", bad, "/y")


def test_it_tells_a_zombie_postmaster_from_a_live_one(tmp_path):
    import os
    import time

    pgdata = data_dir(tmp_path, "z $(id)")
    child = os.fork()
    if child == 0:
        os._exit(0)  # a child that exits and is not waited for: a zombie
    try:
        deadline = time.monotonic() + 5
        while open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (pgdata / "postmaster.pid").write_text(f"{child}\n{pgdata}\n")
        assert run(commands.postmaster_zombie(str(pgdata))).stdout == f"zombie {child}\n"
        (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n")
        assert run(commands.postmaster_zombie(str(pgdata))).stdout == f"alive {os.getpid()}\n"
    finally:
        os.waitpid(child, 0)
    assert run(commands.postmaster_zombie(str(pgdata))).stdout == f"alive {os.getpid()}\n"
    (pgdata / "postmaster.pid").write_text(f"{child}\n")
    assert run(commands.postmaster_zombie(str(pgdata))).stdout == f"gone {child}\n"
    (pgdata / "postmaster.pid").unlink()
    assert run(commands.postmaster_zombie(str(pgdata))).stdout == "no postmaster.pid\n"
