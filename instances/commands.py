"""Command lines for managed servers: pure, no I/O.

Every command ElepHaaS runs on a server starts life here as a list of arguments and
becomes a shell command line only through `quote_argv`, because sshd hands the line to
the remote user's login shell. An instance name, a data directory or a herd name chosen
in the admin therefore always arrives as one literal argument, whatever it contains.

Secrets never appear here: they reach remote commands on stdin (`ssh.run(input=...)`),
because a command line is visible in `ps`, in the server's logs and in job step logs.
(The wrapper every command runs under, `owned`, holds that input in a mode-0600 file of
the SSH user's in $TMPDIR while the command runs, and removes it when it ends.)

Every argv and shell snippet an operation runs is built here, from plain values: the
instance action presets (`pg_ctlcluster`, `pg_ctl`), the PostgreSQL tools (pg_controldata,
pg_rewind, pg_basebackup, rsync) and the few shell scripts, whose values always arrive as
positional arguments ("$1", "$@"), never formatted into the script.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

# A POSIX shell variable name; anything else would not be an assignment to the shell
# but the name of the command to run.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Words a shell treats specially in command position even though shlex.quote leaves them
# bare (POSIX reserved words, and bash's): `if` there would be a syntax error.
_RESERVED = frozenset(
    "case coproc do done elif else esac fi for function if in select then time until while".split()
)

# Names whose value is a secret by convention. An assignment is part of the command line,
# so a password put here would be shown in `ps` on the server and in the job log.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PASSFILE", re.IGNORECASE)


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, not {type(value).__name__}: {value!r}")
    if "\x00" in value:
        # A C program sees an argument only up to its first NUL, so the remote command
        # would silently get a shorter value than the one that was asked for.
        raise ValueError(f"{what} contains a NUL byte: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid text (lone surrogate): {value!r}") from None
    return value


def quote_argv(argv: Sequence[str]) -> str:
    """Join `argv` into one POSIX shell command line in which every value is quoted.

    `shlex.split(quote_argv(argv)) == list(argv)`, and a POSIX shell running the line
    passes each item to the program as exactly one argument, with no expansion of any
    kind. Raises ValueError for an empty list, a bare string (a common slip: it would be
    quoted character by character), a non-str item, or a NUL byte.
    """
    if isinstance(argv, str | bytes | bytearray):
        raise ValueError(f"argv must be a list of arguments, not a single string: {argv!r}")
    items = list(argv)
    if not items:
        raise ValueError("argv is empty: there is no command to run")
    if items[0] == "":
        raise ValueError("argv[0] is empty: there is no command to run")
    quoted = [shlex.quote(_check_text(item, f"argument {i}")) for i, item in enumerate(items)]
    # shlex.quote leaves `NAME=value` bare (`=` is a safe character), but as the first word
    # of a command the shell would take it as a variable assignment, and a reserved word
    # as syntax. Quoting them makes the shell run a program of that literal name instead.
    if quoted[0] == items[0] and ("=" in items[0] or items[0] in _RESERVED):
        quoted[0] = f"'{items[0]}'"
    return " ".join(quoted)


@dataclass(frozen=True)
class Command:
    """A command to run on a server: its arguments and optional safe environment variables.

    `env` is for harmless settings such as `PGAPPNAME` or `LC_ALL`; names that usually hold
    secrets are refused, because assignments are part of the command line.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.argv, str | bytes | bytearray):
            raise ValueError(f"argv must be a list of arguments, not a string: {self.argv!r}")
        object.__setattr__(self, "argv", tuple(self.argv))
        env = dict(self.env)
        for name, value in env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not a valid name")
            if _SECRET_NAME.search(name):
                raise ValueError(
                    f"environment variable {name} looks like a secret; secrets must reach "
                    "the command on stdin, never on its command line"
                )
            _check_text(value, f"environment variable {name}")
        object.__setattr__(self, "env", MappingProxyType(env))
        # Validate argv now so that a bad command fails where it is built, not at run time.
        self.line()

    def words(self) -> list[str]:
        """argv, behind `env NAME=value ...` when it sets environment variables."""
        if not self.env:
            return list(self.argv)
        return ["env", *(f"{name}={value}" for name, value in self.env.items()), *self.argv]

    def line(self) -> str:
        """The quoted command line: `NAME='value' ... prog 'arg' ...`."""
        prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in self.env.items())
        return prefix + quote_argv(self.argv)


# --- Command builders: the COMMANDS presets -------------------------------------------------
#
# A template is a list of words; each word may contain `{placeholders}` that are replaced by
# instance values *inside that one word*, so a value never becomes more than one argument.
# `debian` drives clusters through postgresql-common (pg_ctlcluster), as on the lab and on
# most Debian/Ubuntu fleets; `pg_ctl` drives any data directory with the server's own pg_ctl.

PRESETS: dict[str, dict[str, list[str]]] = {
    "debian": {
        "start": ["pg_ctlcluster", "{version}", "{cluster}", "start"],
        "stop": ["pg_ctlcluster", "--mode", "{mode}", "{version}", "{cluster}", "stop"],
        "restart": ["pg_ctlcluster", "--mode", "{mode}", "{version}", "{cluster}", "restart"],
        "reload": ["pg_ctlcluster", "{version}", "{cluster}", "reload"],
        "promote": ["pg_ctlcluster", "{version}", "{cluster}", "promote"],
        "status": ["pg_ctlcluster", "{version}", "{cluster}", "status"],
    },
    "pg_ctl": {
        # -l: pg_ctl start must not keep the SSH channel's stdout open for the server's
        # lifetime; the postmaster logs to a file in its data directory instead.
        "start": [
            "{bindir}/pg_ctl",
            "-D",
            "{data_dir}",
            "-l",
            "{data_dir}/elephaas-start.log",
            "-w",
            "-t",
            "{timeout}",
            "start",
        ],
        "stop": [
            "{bindir}/pg_ctl",
            "-D",
            "{data_dir}",
            "-m",
            "{mode}",
            "-w",
            "-t",
            "{timeout}",
            "stop",
        ],
        "restart": [
            "{bindir}/pg_ctl",
            "-D",
            "{data_dir}",
            "-l",
            "{data_dir}/elephaas-start.log",
            "-m",
            "{mode}",
            "-w",
            "-t",
            "{timeout}",
            "restart",
        ],
        "reload": ["{bindir}/pg_ctl", "-D", "{data_dir}", "reload"],
        "promote": ["{bindir}/pg_ctl", "-D", "{data_dir}", "-w", "-t", "{timeout}", "promote"],
        "status": ["{bindir}/pg_ctl", "-D", "{data_dir}", "status"],
    },
}
STOP_MODES = ("smart", "fast", "immediate")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class CommandTemplateError(ValueError):
    pass


def command_templates(
    preset: str, overrides: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """The templates in force: a preset, with any action overridden by settings.COMMANDS."""
    if preset not in PRESETS:
        raise CommandTemplateError(
            f"unknown COMMANDS preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    templates = {action: list(words) for action, words in PRESETS[preset].items()}
    for action, words in (overrides or {}).items():
        if isinstance(words, str) or not words or not all(isinstance(w, str) for w in words):
            raise CommandTemplateError(f"COMMANDS[{action!r}] must be a non-empty list of words")
        templates[action] = list(words)
    return templates


def build(template: Sequence[str], values: Mapping[str, object]) -> list[str]:
    """Fill a template's placeholders, word by word. Unknown placeholders are an error (a
    typo in settings must not silently run a different command)."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise CommandTemplateError(
                f"placeholder {{{name}}} in {' '.join(template)!r} has no value; known: "
                + ", ".join(sorted(values))
            )
        return _check_text(str(values[name]), f"value of {{{name}}}")

    argv = [_PLACEHOLDER.sub(fill, word) for word in template]
    quote_argv(argv)  # validates: no NUL, not empty
    return argv


# --- PostgreSQL tools ------------------------------------------------------------------------


def _tool(bindir: str, name: str) -> str:
    return f"{bindir.rstrip('/')}/{name}"


def pg_controldata(bindir: str, data_dir: str) -> list[str]:
    """English labels whatever the server's locale: the parser reads them."""
    return ["env", "LC_ALL=C", _tool(bindir, "pg_controldata"), "-D", data_dir]


def pg_rewind(bindir: str, data_dir: str, source: str) -> list[str]:
    """`source`: a conninfo (instances.conninfo.source_conninfo); its password is in
    ~postgres/.pgpass on the target's server, never here."""
    return [
        "env",
        "LC_ALL=C",
        _tool(bindir, "pg_rewind"),
        "--target-pgdata",
        data_dir,
        "--source-server",
        source,
        "--progress",
    ]


def pg_basebackup(
    bindir: str,
    data_dir: str,
    *,
    host: str,
    port: int,
    user: str,
    label: str,
    max_rate_kb: int | None = None,
) -> list[str]:
    return [
        _tool(bindir, "pg_basebackup"),
        "--host",
        host,
        "--port",
        str(int(port)),
        "--username",
        user,
        "--no-password",
        "--pgdata",
        data_dir,
        "--wal-method",
        "stream",
        "--checkpoint",
        "fast",
        "--label",
        label,
        "--progress",
        *([f"--max-rate={int(max_rate_kb)}k"] if max_rate_kb else []),
    ]


def pg_waldump_to_end(bindir: str, data_dir: str, start: str, timeline: int) -> list[str]:
    """Read a stopped cluster's WAL from `start` (its REDO point) until it ends; the end
    is in the error it stops with (instances.waldump)."""
    return [
        "env",
        "LC_ALL=C",
        _tool(bindir, "pg_waldump"),
        "--path",
        f"{data_dir.rstrip('/')}/pg_wal",
        "--start",
        start,
        "--timeline",
        str(int(timeline)),
        "--quiet",
    ]


def initdb(bindir: str, data_dir: str) -> list[str]:
    return [_tool(bindir, "initdb"), "-D", data_dir, "--data-checksums"]


def pg_createcluster(version: int, cluster: str, port: int, data_dir: str) -> list[str]:
    return [
        "pg_createcluster",
        "--port",
        str(int(port)),
        "--datadir",
        data_dir,
        str(int(version)),
        cluster,
        "--",
        "--data-checksums",
    ]


def ssh_transport(port: int) -> str:
    """rsync's -e: the servers' own SSH trust (every server knows every server's key)."""
    return f"ssh -p {int(port)} -o BatchMode=yes"


def remote_path(user: str, hostname: str, path: str) -> str:
    """`user@host:path/` for rsync. A user or host that could be read as an option or
    split the spec is refused (the inventory validates both; this is the last guard)."""
    for what, value in (("user", user), ("host", hostname)):
        if not value or value.startswith("-") or re.search(r"[\s@:/]", value):
            raise ValueError(f"unsafe rsync {what}: {value!r}")
    return f"{user}@{hostname}:{path.rstrip('/')}/"


def rsync_wal(transport: str, remote_wal_dir: str, names: Sequence[str], wal_dir: str) -> list[str]:
    """rsync the named WAL segments from `remote_wal_dir` (remote_path) into `wal_dir`.
    -I copies each even where a same-sized file exists (a replica's half-filled segment);
    rsync writes each aside and renames it into place."""
    if not names:
        raise ValueError("no WAL segment to copy")
    for name in names:
        if not re.fullmatch(r"[0-9A-F]{24}", name):
            raise ValueError(f"not a WAL segment file name: {name!r}")
    return [
        "rsync",
        "-a",
        "-I",
        "--itemize-changes",
        "-e",
        transport,
        *[f"--include={name}" for name in names],
        "--exclude=*",
        remote_wal_dir,
        f"{wal_dir.rstrip('/')}/",
    ]


# --- shell snippets ----------------------------------------------------------------------
#
# Each returns ["sh", "-c", SCRIPT, "sh", values...]: the script is a constant and every
# value a positional argument, so no value is ever parsed by the remote shell.

# Removes any primary_conninfo line from postgresql.auto.conf, appends ours, and marks the
# data directory as a standby.
_STANDBY_CONFIG = r"""
set -e
auto="$1/postgresql.auto.conf"
touch "$auto"
grep -v '^[[:space:]]*primary_conninfo[[:space:]]*=' "$auto" > "$auto.elephaas" || true
printf '%s\n' "$2" >> "$auto.elephaas"
mv "$auto.elephaas" "$auto"
touch "$1/standby.signal"
"""
_KEEP_ASIDE = r"""
set -e
dir="$1"; kept="$2"; shift 2
mkdir -p "$kept"
for f in "$@"; do
  if [ -f "$dir/$f" ] && [ ! -f "$kept/$f" ]; then cp -p "$dir/$f" "$kept/$f"; fi
done
ls "$kept"
"""
_PUT_BACK = r"""
set -e
dir="$1"; kept="$2"
[ -d "$kept" ] || exit 0
for f in "$kept"/*; do
  [ -f "$f" ] || continue
  mv "$f" "$dir/"
  echo "kept its own $(basename "$f")"
done
rmdir "$kept"
"""
_EMPTY_DATA_DIR = r"""
set -e
mkdir -p "$1"
chmod 700 "$1"
find "$1" -mindepth 1 -delete
"""
# Before an rsync copy: what rsync excludes must not survive from the old cluster either.
_CLEAN_FOR_RSYNC = r"""
set -e
dir="$1"
mkdir -p "$dir"
chmod 700 "$dir"
for sub in pg_wal pg_replslot pg_dynshmem pg_notify pg_serial pg_snapshots pg_stat_tmp \
           pg_subtrans; do
  if [ -d "$dir/$sub" ]; then find "$dir/$sub" -mindepth 1 -delete; fi
done
rm -f "$dir/postmaster.pid" "$dir/postmaster.opts" "$dir/backup_label" "$dir/tablespace_map" \
      "$dir/standby.signal" "$dir/recovery.signal"
"""
# rsync's exit status 24 ("some files vanished") is normal when copying a live cluster.
_LOGGED = r"""
log="$1"; shift
"$@" > "$log"
rc=$?
[ "$rc" -eq 24 ] && rc=0
exit "$rc"
"""
_WRITE_FILE = r"""
umask 077
cat > "$1"
"""
_PREPARE_PG_WAL = r"""
mkdir -p "$1/pg_wal/archive_status"
rm -f "$2"
"""
_START_CONF_AUTO = r"""
f="$1"
if [ -f "$f" ] && grep -qx manual "$f"; then echo auto > "$f"; echo "start.conf: manual -> auto"; fi
"""
_WRITE_CONF_D = r"""
mkdir -p "$1/conf.d"
conf="$1/conf.d/$2"; shift 2
printf '%s\n' "# written by ElepHaaS: this instance's own address and port" "$@" > "$conf"
"""
# pg_ctl layout (configuration in the data directory): settings in postgresql.auto.conf,
# replacing any earlier value of the same name.
_SET_AUTO_CONF = r"""
set -e
auto="$1/postgresql.auto.conf"; shift
touch "$auto"
cp "$auto" "$auto.elephaas"
for kv in "$@"; do
  key="${kv%%=*}"
  key="${key%% *}"
  grep -v "^[[:space:]]*$key[[:space:]]*=" "$auto.elephaas" > "$auto.elephaas2" || true
  mv "$auto.elephaas2" "$auto.elephaas"
  printf '%s\n' "$kv" >> "$auto.elephaas"
done
mv "$auto.elephaas" "$auto"
"""
# The ps fallback of discovery: for each postmaster pid, its pid, data dir, version, port.
_POSTMASTER_REPORT = r"""
for pid in "$@"; do
  dir=$(readlink "/proc/$pid/cwd") || continue
  [ -f "$dir/PG_VERSION" ] || continue
  port=$(sed -n 4p "$dir/postmaster.pid" 2>/dev/null)
  printf '%s\t%s\t%s\t%s\n' "$pid" "$dir" "$(cat "$dir/PG_VERSION")" "${port:-5432}"
done
"""


# Every command the SSH runner starts runs under this wrapper, so that it ends with its
# channel: the command gets a session (and process group) of its own (setsid), its stdin
# from the first $1 bytes the runner sends ("-": none); the wrapper's own stdin stays the
# channel's. When that reaches EOF before the command has ended (the runner cancelled it,
# the worker died, the connection dropped), the command's whole group gets SIGTERM, then
# SIGKILL 5 s later. $0 names the owner (`elephaas-job-12`), so that a lost job's
# leftovers can be found by it (instances.commands.end_owned). A daemon the command
# starts (pg_ctl start's postmaster) makes a session of its own and is not touched.
_OWNED = r"""
n=$1; shift
in=/dev/null
if [ "$n" != - ]; then
  in=$(mktemp "${TMPDIR:-/tmp}/elephaas-stdin.XXXXXX") || exit 125
  head -c "$n" > "$in"
fi
exec 3<&0
setsid -w "$@" < "$in" 3<&- &
cmd=$!
(
  while IFS= read -r _; do :; done <&3
  i=0
  until kill -s TERM -- -"$cmd" 2>/dev/null; do
    kill -0 "$cmd" 2>/dev/null || exit 0
    i=$((i + 1))
    if [ "$i" -ge 25 ]; then kill -s TERM "$cmd"; exit 0; fi
    sleep 0.2
  done
  sleep 5
  kill -s KILL -- -"$cmd" 2>/dev/null
) > /dev/null 2>&1 &
watch=$!
exec 3<&-
wait "$cmd"
rc=$?
kill -s KILL "$watch" 2>/dev/null
[ "$in" = /dev/null ] || rm -f "$in"
exit "$rc"
"""
# A lost job's leftovers: every wrapper whose $0 is the owner, and the session of each of
# its children (the command and what it started), SIGTERM then SIGKILL. Prints what it
# found, one line each: `pid args`.
_END_OWNED = r"""
owner="$1"
pids=$(pgrep -f "^sh -c .* $owner (-|[0-9]+) " 2>/dev/null) || pids=""
[ -n "$pids" ] || { echo "nothing of $owner runs here"; exit 0; }
sessions=""
for w in $pids; do
  echo "$w: the wrapper of $owner"
  for c in $(pgrep -P "$w" 2>/dev/null); do
    if [ "$(ps -o sid= -p "$c" | tr -d ' ')" = "$c" ]; then
      ps -ww -o pid=,args= -p "$c" 2>/dev/null | cut -c1-300
      sessions="$sessions $c"
      pkill -TERM -s "$c" 2>/dev/null
    else
      kill -TERM "$c" 2>/dev/null
    fi
  done
  kill -TERM "$w" 2>/dev/null
done
sleep 2
for c in $sessions; do pkill -KILL -s "$c" 2>/dev/null; done
for w in $pids; do kill -KILL "$w" 2>/dev/null; done
echo "ended"
exit 0
"""
_OWNER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")


def owner_marker(owner: str) -> str:
    """The wrapper's $0 for an owner such as `job-12`: `elephaas-job-12`."""
    if not _OWNER.match(owner):
        raise ValueError(f"not an owner name (lower-case letters, digits, -): {owner!r}")
    return f"elephaas-{owner}"


def owned(owner: str, argv: Sequence[str], input_length: int | None = None) -> list[str]:
    """`argv` run under the wrapper that ends it with its SSH channel (see _OWNED)."""
    count = "-" if input_length is None else str(int(input_length))
    wrapped = ["sh", "-c", _OWNED, owner_marker(owner), count, *argv]
    quote_argv(wrapped)
    return wrapped


def end_owned(owner: str) -> list[str]:
    """End what a lost owner left running on a server (see _END_OWNED)."""
    return _sh(_END_OWNED, owner_marker(owner))


# A data directory being replaced: a marker beside it (pg_basebackup needs the directory
# itself empty) saying which job, and Debian's start.conf held at manual so that a boot
# does not start a half-copied cluster. A retry keeps the first record.
_MARK_INCOMPLETE = r"""
marker="$1"; job="$2"; start_conf="$3"
if [ ! -f "$marker" ]; then
  held=no
  if [ -n "$start_conf" ] && [ -f "$start_conf" ] && grep -qx auto "$start_conf"; then
    echo manual > "$start_conf"; held=yes
  fi
  printf 'rebuild incomplete: job %s\nstart.conf held: %s\n' "$job" "$held" > "$marker"
else
  printf 'retried by job %s\n' "$job" >> "$marker"
fi
cat "$marker"
"""
_CLEAR_INCOMPLETE = r"""
marker="$1"; start_conf="$2"
if [ -f "$marker" ] && grep -qx 'start.conf held: yes' "$marker" && [ -n "$start_conf" ] \
   && [ -f "$start_conf" ] && grep -qx manual "$start_conf"; then
  echo auto > "$start_conf"; echo "start.conf: manual -> auto"
fi
rm -f "$marker"
echo "marker removed"
"""


# A fenced old primary: a marker beside its data directory that Start, Restart and Promote
# refuse (the pg_ctl preset has no start.conf), and Debian's start.conf at manual so that a
# boot does not start it. Removed only by a rebuild that makes it a replica again.
_FENCE = r"""
marker="$1"; job="$2"; start_conf="$3"
if [ ! -f "$marker" ]; then
  printf 'fenced: job %s\n' "$job" > "$marker"
fi
echo "fence marker: $marker"
if [ -n "$start_conf" ] && [ -f "$start_conf" ]; then
  echo manual > "$start_conf"; echo "start.conf: manual"
fi
"""
_UNFENCE = r"""
if [ -f "$1" ]; then rm -f "$1"; echo "fence marker removed"; fi
"""


# Is the postmaster of a data directory a zombie (killed, not yet reaped by its parent)?
# pg_ctl's status takes any pid that exists for a running server; a zombie writes nothing.
_POSTMASTER_ZOMBIE = r"""
pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null)
case "$pid" in ''|*[!0-9]*) echo "no postmaster.pid"; exit 0;; esac
state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
case "$state" in
  Z) echo "zombie $pid";;
  '') echo "gone $pid";;
  *) echo "alive $pid";;
esac
"""


def postmaster_zombie(data_dir: str) -> list[str]:
    return _sh(_POSTMASTER_ZOMBIE, data_dir)


# An action's command run only when no fence marker is beside the data directory: the
# check and the action are one command, so no fence lands between them, and a bulk
# action costs one command per instance, not two.
FENCED_EXIT = 97
FENCED_SAYS = "elephaas: fenced:"
_UNLESS_FENCED = r"""
marker="$1"; shift
if [ -e "$marker" ]; then
  said=$(head -c 200 "$marker" 2>/dev/null | tr -d '\n')
  printf 'elephaas: fenced: %s (%s)\n' "$said" "$marker" >&2
  exit 97
fi
exec "$@"
"""


def unless_fenced(marker: str, argv: Sequence[str]) -> list[str]:
    """`argv`, run only when `marker` does not exist (else exit FENCED_EXIT, saying so)."""
    return _sh(_UNLESS_FENCED, marker, *argv)


def fence(marker: str, job: int, start_conf: str | None) -> list[str]:
    return _sh(_FENCE, marker, str(int(job)), start_conf or "")


def unfence(marker: str) -> list[str]:
    """Remove the fence marker (the rebuild sets start.conf back with start_conf_auto)."""
    return _sh(_UNFENCE, marker)


def mark_incomplete(marker: str, job: int, start_conf: str | None) -> list[str]:
    return _sh(_MARK_INCOMPLETE, marker, str(int(job)), start_conf or "")


def clear_incomplete(marker: str, start_conf: str | None) -> list[str]:
    return _sh(_CLEAR_INCOMPLETE, marker, start_conf or "")


def _sh(script: str, *values: str) -> list[str]:
    argv = ["sh", "-c", script, "sh", *values]
    quote_argv(argv)  # validates every value: text, no NUL
    return argv


def _no_newline(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} must be one line: {value!r}")
    return value


def write_standby_config(data_dir: str, primary_conninfo_line: str) -> list[str]:
    """`primary_conninfo_line`: instances.conninfo.config_line("primary_conninfo", …)."""
    return _sh(_STANDBY_CONFIG, data_dir, _no_newline(primary_conninfo_line, "the setting"))


def keep_aside(data_dir: str, kept_dir: str, files: Sequence[str]) -> list[str]:
    for name in files:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a file name in the data directory: {name!r}")
    return _sh(_KEEP_ASIDE, data_dir, kept_dir, *files)


def put_back(data_dir: str, kept_dir: str) -> list[str]:
    return _sh(_PUT_BACK, data_dir, kept_dir)


def empty_data_dir(data_dir: str) -> list[str]:
    return _sh(_EMPTY_DATA_DIR, data_dir)


def clean_for_rsync(data_dir: str) -> list[str]:
    return _sh(_CLEAN_FOR_RSYNC, data_dir)


def logged(logfile: str, argv: Sequence[str]) -> list[str]:
    """Run argv with its stdout in `logfile` (read by the progress monitor); rsync's
    "some files vanished" (24) counts as success."""
    return _sh(_LOGGED, logfile, *argv)


def write_file(path: str) -> list[str]:
    """Write stdin to `path`, mode 0600 (the content never appears on a command line)."""
    return _sh(_WRITE_FILE, path)


def prepare_pg_wal(data_dir: str, logfile: str) -> list[str]:
    return _sh(_PREPARE_PG_WAL, data_dir, logfile)


def start_conf_auto(start_conf: str) -> list[str]:
    return _sh(_START_CONF_AUTO, start_conf)


def write_conf_d(conf_dir: str, file_name: str, lines: Sequence[str]) -> list[str]:
    if "/" in file_name or not file_name:
        raise ValueError(f"not a file name: {file_name!r}")
    return _sh(_WRITE_CONF_D, conf_dir, file_name, *(_no_newline(x, "a line") for x in lines))


def set_auto_conf(data_dir: str, lines: Sequence[str]) -> list[str]:
    """`lines`: config_line(...) values; each replaces any earlier line of its name."""
    return _sh(_SET_AUTO_CONF, data_dir, *(_no_newline(x, "a line") for x in lines))


def postmaster_report(pids: Sequence[int]) -> list[str]:
    return _sh(_POSTMASTER_REPORT, *(str(int(pid)) for pid in pids))
