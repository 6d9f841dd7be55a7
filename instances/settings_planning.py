"""Validating a configuration change against an instance's own pg_settings: pure, no I/O.

Before "change a setting" queues anything, each selected instance's pg_settings row for the
parameter is read live; `check` says whether the value is acceptable there (type, units,
min/max, enum values, context) and whether a reload is enough or a restart is needed. A
refusal on any instance queues nothing anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")

MEMORY = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
TIME = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
BOOL_TRUE = {"on", "true", "yes", "1", "t", "y"}
BOOL_FALSE = {"off", "false", "no", "0", "f", "n"}
NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")
# Contexts a reload makes take effect (new sessions for "backend"); "postmaster" needs a
# restart; "internal" cannot be changed at all.
RELOAD_CONTEXTS = {"sighup", "superuser", "user", "backend", "superuser-backend"}


@dataclass(frozen=True)
class SettingRow:
    """The pg_settings columns that decide."""

    name: str
    setting: str
    unit: str | None
    vartype: str  # bool, enum, integer, real, string
    context: str
    min_val: str | None = None
    max_val: str | None = None
    enumvals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # the refusal, or what will take effect when
    restart: bool = False  # a restart is needed for it to take effect
    value: str = ""  # the value as it will be written


def check_name(name: str) -> str:
    """A parameter name as ALTER SYSTEM takes it, or a ValueError saying why not."""
    text = (name or "").strip().lower()
    if not NAME.match(text) or len(text) > 63:
        raise ValueError(
            f"“{(name or '')[:40]}” is not a parameter name (letters, digits and _; an "
            "extension's as prefix.name)"
        )
    return text


def _unit_scale(unit: str | None) -> tuple[str, float] | None:
    """pg_settings.unit ("8kB", "ms", "min") → (family, size of one unit)."""
    if not unit:
        return None
    match = re.match(r"^(\d*)([A-Za-z]+)$", unit)
    if not match:
        return None
    count = int(match.group(1) or 1)
    name = match.group(2)
    if name in MEMORY:
        return "memory", count * MEMORY[name]
    if name in TIME:
        return "time", count * TIME[name]
    return None


def _number(row: SettingRow, value: str) -> tuple[float | None, str]:
    """The value in the setting's own unit, or (None, why)."""
    match = NUMBER.match(value)
    if not match:
        return None, f"“{value[:40]}” is not a number"
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        return number, ""
    scale = _unit_scale(row.unit)
    if scale is None:
        return None, f"{row.name} takes no unit (“{unit}” given)"
    family, size = scale
    table = MEMORY if family == "memory" else TIME
    if unit not in table:
        valid = ", ".join(table)
        return None, f"“{unit}” is not a {family} unit for {row.name} (use {valid})"
    return number * table[unit] / size, ""


def check(row: SettingRow | None, name: str, value: str) -> Verdict:
    if row is None:
        return Verdict(False, f"{name} is not a parameter of this server (pg_settings)")
    if "\x00" in value:
        return Verdict(False, "a value cannot contain a NUL character")
    if row.context == "internal":
        return Verdict(False, f"{row.name} is fixed when the server is built or initialised")
    restart = row.context == "postmaster"
    when = "needs a restart" if restart else "a reload is enough"
    text = value.strip()
    if row.vartype == "bool":
        lowered = text.lower()
        if lowered in BOOL_TRUE:
            return Verdict(True, when, restart, "on")
        if lowered in BOOL_FALSE:
            return Verdict(True, when, restart, "off")
        return Verdict(False, f"{row.name} is on or off, not “{text[:40]}”")
    if row.vartype == "enum":
        for option in row.enumvals:
            if option.lower() == text.lower():
                return Verdict(True, when, restart, option)
        return Verdict(False, f"{row.name} is one of {', '.join(row.enumvals)}, not “{text[:40]}”")
    if row.vartype in ("integer", "real"):
        number, why = _number(row, text)
        if number is None:
            return Verdict(False, why)
        if row.vartype == "integer":
            number = float(round(number))
        low = float(row.min_val) if row.min_val not in (None, "") else None
        high = float(row.max_val) if row.max_val not in (None, "") else None
        unit = f" {row.unit}" if row.unit else ""
        if (low is not None and number < low) or (high is not None and number > high):
            return Verdict(
                False,
                f"{row.name} must be between {row.min_val} and {row.max_val}{unit}; "
                f"“{text[:40]}” is {number:g}{unit}",
            )
        return Verdict(True, when, restart, text)
    if row.vartype == "string":
        if len(text) > 4096:
            return Verdict(False, "a value longer than 4096 characters is refused")
        return Verdict(True, when, restart, value)
    return Verdict(False, f"{row.name} has a type ElepHaaS does not know ({row.vartype})")
