"""Command lines for managed servers: pure, no I/O.

Every command ElepHaaS runs on a server starts life here as a list of arguments and
becomes a shell command line only through `quote_argv`, because sshd hands the line to
the remote user's login shell. An instance name, a data directory or a herd name chosen
in the admin therefore always arrives as one literal argument, whatever it contains.

Secrets never appear here: they reach remote commands on stdin (`ssh.run(input=...)`),
because a command line is visible in `ps`, in the server's logs and in job step logs.
The command builders (the `pg_ctlcluster` and `pg_ctl` presets) will live in this module.
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
