"""Small typed readers for settings that come from environment variables.

Each raises ImproperlyConfigured naming the variable when its value is unusable, so a
typo in a unit file fails at start-up instead of at 3 a.m. in the middle of a failover.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def envint(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        value = default
    else:
        try:
            value = int(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum {maximum}")
    return value


def envfloat(name: str, default: float, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envsecret(name: str, default: str = "") -> str:
    """A secret from NAME, or from the file named by NAME_FILE (systemd credentials, the lab)."""
    direct = os.environ.get(name)
    path = os.environ.get(f"{name}_FILE")
    if direct is not None and path:
        raise ImproperlyConfigured(f"set {name} or {name}_FILE, not both")
    if direct is not None:
        return direct
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{name}_FILE={path}: cannot read it ({exc.strerror})"
            ) from None
    return default


def load_env_file(path: Path) -> None:
    """Read KEY=VALUE lines into os.environ without overriding what is already set.

    The lab writes such a file (.lab/elephaas.env) so that `manage.py`, the worker and the
    tests all find the lab's services without anyone exporting variables by hand. On a
    controller, `elephaas-manage` reads /etc/elephaas/elephaas.env, which the units read
    as their EnvironmentFile: a key set twice takes its last value, as systemd does.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ImproperlyConfigured(f"{path}:{lineno}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    for key, value in values.items():
        os.environ.setdefault(key, value)
