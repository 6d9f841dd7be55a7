"""The Postgres probe: the one module that connects to managed instances with psycopg2.

The password comes from settings (ELEPHAAS_PG_PASSWORD / _FILE) and is handed to libpq as
a keyword, never placed in a command line or a log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg2
from django.conf import settings


class ProbeError(Exception):
    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"{address}: {message}")
        self.address = address


@dataclass(frozen=True)
class ProbeResult:
    in_recovery: bool
    version_num: int
    lsn: str  # current WAL insert location (primary) or last replayed (replica)
    receive_lsn: str | None
    replay_lsn: str | None
    lag_bytes: int | None
    lag_seconds: float | None
    primary_conninfo: str
    duration: float
    # pg_stat_wal_receiver.status ("streaming", "waiting", …); None when no WAL receiver
    # runs (a primary, or a replica that lost its upstream); "unknown" when the probe role
    # may not read it (it needs pg_read_all_stats).
    wal_receiver_status: str | None = None


QUERY = """
SELECT pg_is_in_recovery(),
       current_setting('server_version_num')::int,
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text
            ELSE pg_current_wal_lsn()::text END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_is_in_recovery()
            -- After a restart the receive position starts at a segment boundary, behind
            -- what was already replayed: that is no lag.
            THEN GREATEST(pg_wal_lsn_diff(pg_last_wal_receive_lsn(),
                                          pg_last_wal_replay_lsn()), 0)::bigint
       END,
       CASE WHEN pg_is_in_recovery() THEN
            CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                 ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END
       END,
       current_setting('primary_conninfo'),
       (SELECT coalesce(status, 'unknown') FROM pg_stat_wal_receiver LIMIT 1)
"""


def connect(
    hostname: str, port: int, dbname: str | None = None, *, statement_timeout: float | None = None
):
    """A connection to a managed instance; `statement_timeout` (seconds) bounds each query
    on the server side, for callers that must answer within a deadline (health polling)."""
    address = f"{hostname}:{port}"
    extra = {}
    if statement_timeout is not None:
        milliseconds = max(1, int(statement_timeout * 1000))
        extra["options"] = f"-c statement_timeout={milliseconds}"
        # A host that vanishes mid-query never answers, so the server-side timeout
        # cannot fire: give up on data left unacknowledged as long.
        extra["tcp_user_timeout"] = milliseconds
    try:
        return psycopg2.connect(
            host=hostname,
            port=port,
            dbname=dbname or settings.PG_PROBE_DATABASE,
            user=settings.PG_PROBE_USER,
            password=settings.PG_PROBE_PASSWORD or None,
            connect_timeout=settings.PG_PROBE_CONNECT_TIMEOUT,
            application_name="elephaas",
            **extra,
        )
    except psycopg2.OperationalError as exc:
        raise ProbeError(address, _first_line(exc)) from None


def probe(hostname: str, port: int, *, statement_timeout: float | None = None) -> ProbeResult:
    started = time.monotonic()
    conn = connect(hostname, port, statement_timeout=statement_timeout)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(QUERY)
            row = cur.fetchone()
    except psycopg2.Error as exc:
        raise ProbeError(f"{hostname}:{port}", _first_line(exc)) from None
    finally:
        conn.close()
    in_recovery, version_num, lsn, receive, replay, lag_bytes, lag_seconds, conninfo, wal = row
    return ProbeResult(
        in_recovery=in_recovery,
        version_num=version_num,
        lsn=lsn or "",
        receive_lsn=receive,
        replay_lsn=replay,
        lag_bytes=int(lag_bytes) if lag_bytes is not None else None,
        lag_seconds=float(lag_seconds) if lag_seconds is not None else None,
        primary_conninfo=conninfo or "",
        duration=time.monotonic() - started,
        wal_receiver_status=wal,
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def conf_load_time(hostname: str, port: int) -> str:
    """When the server last (re)loaded its configuration: a reload moves it forward."""
    conn = connect(hostname, port)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_conf_load_time()::text")
            return cur.fetchone()[0]
    except psycopg2.Error as exc:
        raise ProbeError(f"{hostname}:{port}", _first_line(exc)) from None
    finally:
        conn.close()


def _run(hostname: str, port: int, sql: str, params: list | None = None):
    conn = connect(hostname, port)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description else None
    except psycopg2.Error as exc:
        raise ProbeError(f"{hostname}:{port}", _first_line(exc)) from None
    finally:
        conn.close()


def check_writable(hostname: str, port: int) -> str:
    """Prove the instance accepts writes: assigning a transaction id fails in recovery.
    Returns the WAL position afterwards."""
    row = _run(hostname, port, "SELECT txid_current(), pg_current_wal_lsn()::text")
    return row[1]


def set_primary_conninfo(hostname: str, port: int, conninfo: str) -> None:
    """Point a running replica at another upstream (PostgreSQL 13+: a reload suffices).
    The conninfo carries no password: the walreceiver reads ~postgres/.pgpass."""
    _run(hostname, port, "ALTER SYSTEM SET primary_conninfo = %s", [conninfo])
    _run(hostname, port, "SELECT pg_reload_conf()")


def wal_receiver(hostname: str, port: int) -> tuple[str, str, int] | None:
    """(status, sender host, sender port) of the replica's WAL receiver, or None."""
    row = _run(hostname, port, "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
    return (row[0], row[1] or "", row[2] or 0) if row else None


def checkpoint(hostname: str, port: int) -> None:
    _run(hostname, port, "CHECKPOINT")
