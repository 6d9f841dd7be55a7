"""libpq connection strings and postgresql.conf values: reading and writing them. Pure.

`primary_conninfo` is written in two places that quote differently: as a libpq conninfo
(`key=value`, a value with spaces, quotes or backslashes single-quoted with backslash
escapes) and, when written into postgresql.auto.conf by a shell step, as a configuration
file value (single-quoted, with `'` doubled and `\\` doubled, as ALTER SYSTEM writes it).
Both quotings live here, once, and the hostile-input tests cover their round trips.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

_TOKEN = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
_BARE_SAFE = re.compile(r"[^\s'\\]+\Z")
# Options that carry or point to a secret: never copied into a new conninfo (the
# password lives in ~postgres/.pgpass on the servers).
SECRET_OPTIONS = ("password", "passfile")


def parse_conninfo(conninfo: str) -> dict[str, str]:
    """libpq `key=value` conninfo (values may be single-quoted with backslash escapes).
    URIs (postgresql://…) are read for host and port only."""
    conninfo = conninfo.strip()
    if conninfo.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(conninfo)
        result = {}
        if parts.hostname:
            result["host"] = parts.hostname
        if parts.port:
            result["port"] = str(parts.port)
        return result
    result: dict[str, str] = {}
    pos = 0
    while pos < len(conninfo):
        match = _TOKEN.match(conninfo, pos)
        if not match or match.end() == pos:
            break
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.S)
        result[key] = value
        pos = match.end()
    return result


def conninfo_value(value: str) -> str:
    """One libpq conninfo value: bare when safe, else single-quoted with backslash escapes."""
    if _BARE_SAFE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_conninfo(options: Mapping[str, object]) -> str:
    """`key=value …` with every value quoted as libpq reads it."""
    for key in options:
        if not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(f"not a libpq connection option name: {key!r}")
    return " ".join(f"{key}={conninfo_value(str(value))}" for key, value in options.items())


def application_name(herd: str, hostname: str) -> str:
    """What a replica calls itself to its upstream (pg_stat_replication.application_name):
    letters, digits and underscores only, so synchronous_standby_names can name it."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{herd}_{hostname}")


def primary_conninfo(
    *, host: str, port: int, user: str, application: str, template: str = ""
) -> str:
    """primary_conninfo for a replica streaming from host:port: the options of its current
    conninfo (`template`: sslmode, keepalives…) with a new host and port, the user it had
    (else `user`), and no password or passfile."""
    options = parse_conninfo(template) if template else {}
    for secret in SECRET_OPTIONS:
        options.pop(secret, None)
    options["host"] = host
    options["port"] = str(int(port))
    options.setdefault("user", user)
    options["application_name"] = application
    return format_conninfo(options)


def source_conninfo(*, host: str, port: int, user: str, dbname: str) -> str:
    """A conninfo for a tool that connects as a client (pg_rewind --source-server)."""
    return format_conninfo({"host": host, "port": int(port), "user": user, "dbname": dbname})


def config_value(value: str) -> str:
    """A postgresql.conf string value: single-quoted, `'` and `\\` doubled, as ALTER
    SYSTEM writes postgresql.auto.conf (the file's reader turns both back)."""
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError("a configuration value cannot span lines or contain NUL")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def config_line(name: str, value: str) -> str:
    """`name = 'value'` for postgresql.conf / postgresql.auto.conf."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a configuration parameter name: {name!r}")
    return f"{name} = {config_value(value)}"
