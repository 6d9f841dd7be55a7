"""What applications should connect to, per herd: its DNS names, and libpq and JDBC
connection strings listing every member, which follow a switchover with no DNS change
(the driver tries each host and keeps the one with the session it asked for). Pure.

Never a password: applications bring their own credentials (a .pgpass, a vault).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

DBNAME = "DBNAME"


@dataclass(frozen=True)
class Endpoint:
    what: str
    value: str
    note: str = ""


def _host(host: str, port: int) -> str:
    host = host.strip().rstrip(".")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{int(port)}"


def _hosts(members: Sequence[tuple[str, int]]) -> str:
    seen: list[str] = []
    for host, port in members:
        entry = _host(host, port)
        if entry not in seen:
            seen.append(entry)
    return ",".join(seen)


def endpoints(
    *,
    vhost: str,
    ro_vhost: str,
    port: int,
    primary: Sequence[tuple[str, int]],
    replicas: Sequence[tuple[str, int]],
    dbname: str = DBNAME,
) -> list[Endpoint]:
    """`vhost`, `ro_vhost`: absolute DNS names or "" (none); `primary`, `replicas`:
    (host, port) of the members as recorded (the primary first in the read-write strings,
    the replicas first in the read-only ones)."""
    db = quote(dbname, safe="")
    result = []
    if vhost:
        result.append(Endpoint("read-write DNS name", _host(vhost, port), "follows the primary"))
    if ro_vhost:
        result.append(
            Endpoint("read-only DNS name", _host(ro_vhost, port), "one A record per replica")
        )
    rw = _hosts([*primary, *replicas])
    ro = _hosts([*replicas, *primary])
    if rw:
        result += [
            Endpoint(
                "libpq, read-write",
                f"postgresql://{rw}/{db}?target_session_attrs=read-write",
                "follows a switchover without DNS",
            ),
            Endpoint(
                "libpq, read-only",
                f"postgresql://{ro}/{db}?target_session_attrs=prefer-standby",
                "a replica when one answers (libpq 14+; read-only: never the primary)",
            ),
            Endpoint(
                "JDBC, read-write",
                f"jdbc:postgresql://{rw}/{db}?targetServerType=primary",
            ),
            Endpoint(
                "JDBC, read-only",
                f"jdbc:postgresql://{ro}/{db}?targetServerType=preferSecondary"
                "&loadBalanceHosts=true",
            ),
        ]
    return result
