"""The fleet's configuration as gathered from pg_settings: pure, no I/O.

What changed since the last gathering (so that a gathering writes only what changed),
which settings differ between the members of a herd (drift), and the fleet-wide search's
"name = value" queries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Settings that differ between the members of a herd by design: each member's own
# address, its upstream, its files. Comparing them would flag every healthy herd.
PER_MEMBER = frozenset(
    {
        "archive_cleanup_command",
        "cluster_name",
        "config_file",
        "data_directory",
        "external_pid_file",
        "hba_file",
        "ident_file",
        "listen_addresses",
        "primary_conninfo",
        "primary_slot_name",
        "promote_trigger_file",
        "recovery_end_command",
        "restore_command",
        "ssl_cert_file",
        "ssl_key_file",
        "stats_temp_directory",
    }
)
# Columns are bounded so that one odd value cannot fail a whole gathering.
MAX_NAME, MAX_UNIT, MAX_SOURCE, MAX_VALUE = 200, 16, 32, 4000


@dataclass(frozen=True)
class Seen:
    """One non-default setting of one instance as pg_settings showed it."""

    name: str
    setting: str
    unit: str
    source: str
    pending_restart: bool
    shown: str

    @property
    def key(self) -> tuple[str, str]:
        """What two members must share to count as the same value: the setting in its
        base unit (SHOW's text rounds: 1GB and 1025MB)."""
        return (self.setting, self.unit)


def parse_rows(rows: Iterable[Sequence]) -> dict[str, Seen]:
    """pg_settings rows (name, setting, unit, source, pending_restart, shown) by name."""
    found = {}
    for name, setting, unit, source, pending, shown in rows:
        name = str(name)[:MAX_NAME]
        found[name] = Seen(
            name=name,
            setting=str(setting or "")[:MAX_VALUE],
            unit=str(unit or "")[:MAX_UNIT],
            source=str(source or "")[:MAX_SOURCE],
            pending_restart=bool(pending),
            shown=str(shown or "")[:MAX_VALUE],
        )
    return found


def changes(old: Mapping[str, Seen], new: Mapping[str, Seen]) -> tuple[list[Seen], list[str]]:
    """(rows to write, names to delete) to turn what is stored into what was seen."""
    write = [seen for name, seen in sorted(new.items()) if old.get(name) != seen]
    gone = sorted(name for name in old if name not in new)
    return write, gone


@dataclass(frozen=True)
class Drift:
    """A setting the members of a herd do not share."""

    name: str
    # Per member, in the members' order: SHOW's text, or None for the built-in default.
    values: tuple[str | None, ...]
    # Per member: differs from the reference member (the primary).
    differs: tuple[bool, ...]
    # Per member: a value written but waiting for a restart (drift in the making).
    pending: tuple[bool, ...] = ()


def drift(members: Sequence[Mapping[str, Seen]], reference: int = 0) -> list[Drift]:
    """The settings whose value is not the same on every member (a member without a row
    runs the built-in default), or that wait for a restart on some members only, by name;
    PER_MEMBER settings are left out. `reference` is the index of the member the others
    are compared with (the primary)."""
    if len(members) < 2:
        return []
    if not 0 <= reference < len(members):
        reference = 0
    names = sorted({name for seen in members for name in seen} - PER_MEMBER)
    result = []
    for name in names:
        keys = [
            (*seen[name].key, seen[name].pending_restart) if name in seen else None
            for seen in members
        ]
        if len(set(keys)) < 2:
            continue
        result.append(
            Drift(
                name=name,
                values=tuple(seen[name].shown if name in seen else None for seen in members),
                differs=tuple(key != keys[reference] for key in keys),
                pending=tuple(name in seen and seen[name].pending_restart for seen in members),
            )
        )
    return result


QUERY = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>!=|<>|=)\s*(?P<value>.*?)\s*$", re.S
)


@dataclass(frozen=True)
class SettingQuery:
    name: str
    value: str
    negate: bool


def parse_query(text: str) -> SettingQuery | None:
    """'max_connections = 100', "work_mem != '4MB'": a name, = or != (<>), a value (quotes
    optional). None when the text is not such a query (a plain search)."""
    match = QUERY.match(text or "")
    if match is None:
        return None
    value = match["value"]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    if not value:
        return None
    return SettingQuery(name=match["name"].lower(), value=value, negate=match["op"] != "=")
