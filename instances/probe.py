"""The Postgres probe: the one module that connects to managed instances with psycopg2.

The password comes from settings (ELEPHAAS_PG_PASSWORD / _FILE) and is handed to libpq as
a keyword, never placed in a command line or a log.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import psycopg2
from django.conf import settings
from psycopg2 import sql

from instances.settings_planning import SettingRow


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
    # The settings whose change waits for a restart (pg_settings.pending_restart), by name.
    pending_restart: str = ""
    # The timeline it writes on (a primary) or receives (a replica); None when not readable.
    timeline: int | None = None


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
       (SELECT coalesce(status, 'unknown') FROM pg_stat_wal_receiver LIMIT 1),
       (SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM pg_settings
         WHERE pending_restart),
       CASE WHEN pg_is_in_recovery()
            -- What its WAL receiver streams (hidden without pg_read_all_stats), else the
            -- timeline of its last restartpoint.
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            -- The first 8 hex digits of the current WAL file's name: right from the
            -- promotion on, where pg_control_checkpoint() keeps the old timeline until
            -- the next checkpoint completes (a spread one takes minutes).
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
       END
"""


def connect(
    hostname: str,
    port: int,
    dbname: str | None = None,
    *,
    statement_timeout: float | None = None,
    application_name: str = "elephaas",
    connect_timeout: int | None = None,
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
            connect_timeout=connect_timeout or settings.PG_PROBE_CONNECT_TIMEOUT,
            application_name=application_name,
            **extra,
        )
    except psycopg2.OperationalError as exc:
        raise ProbeError(address, _first_line(exc)) from None


# Health sweeps keep one idle connection per instance per worker process: opening a new
# one costs a backend fork and a SCRAM exchange (a few ms of CPU on each side), which made
# a sweep of 24 instances CPU-bound. Kept connections carry this application_name so that a
# "smart" stop can end them first (they would otherwise make it wait forever).
KEPT_APPLICATION_NAME = "elephaas-health"
_kept_lock = threading.Lock()
_kept: dict[tuple[int, str, int], list] = {}


def _take_kept(hostname: str, port: int):
    with _kept_lock:
        idle = _kept.get((os.getpid(), hostname, port))
        return idle.pop() if idle else None


def _give_back(hostname: str, port: int, conn) -> None:
    with _kept_lock:
        _kept.setdefault((os.getpid(), hostname, port), []).append(conn)


def forget_kept(hostname: str, port: int) -> None:
    """Close this process's kept connections to an instance (before stopping it)."""
    with _kept_lock:
        idle = _kept.pop((os.getpid(), hostname, port), [])
    for conn in idle:
        conn.close()


def probe(
    hostname: str,
    port: int,
    *,
    statement_timeout: float | None = None,
    keep: bool = False,
    connect_timeout: int | None = None,
) -> ProbeResult:
    """One look at an instance. `keep`: reuse and keep an idle connection (health sweeps);
    a kept connection that fails is replaced once by a fresh one (the query only reads)."""
    started = time.monotonic()
    reused = _take_kept(hostname, port) if keep else None
    conn = reused or connect(
        hostname,
        port,
        statement_timeout=statement_timeout,
        application_name=KEPT_APPLICATION_NAME if keep else "elephaas",
        connect_timeout=connect_timeout,
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(QUERY)
            row = cur.fetchone()
    except psycopg2.Error as exc:
        conn.close()
        if reused is not None:
            return probe(hostname, port, statement_timeout=statement_timeout, keep=True)
        raise ProbeError(f"{hostname}:{port}", _first_line(exc)) from None
    if keep:
        _give_back(hostname, port, conn)
    else:
        conn.close()
    (
        in_recovery,
        version_num,
        lsn,
        receive,
        replay,
        lag_bytes,
        lag_seconds,
        conninfo,
        wal,
        pend,
        timeline,
    ) = row
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
        pending_restart=pend or "",
        timeline=int(timeline) if timeline is not None else None,
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


def current_timeline(hostname: str, port: int) -> int:
    """The timeline a primary writes on, from its current WAL file's name (right from the
    promotion on: pg_control_checkpoint() shows the new one only after a checkpoint)."""
    row = _run(
        hostname,
        port,
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
    )
    return int(row[0])


def set_primary_conninfo(hostname: str, port: int, conninfo: str) -> None:
    """Point a running replica at another upstream (PostgreSQL 13+: a reload suffices).
    The conninfo carries no password: the walreceiver reads ~postgres/.pgpass."""
    _run(hostname, port, "ALTER SYSTEM SET primary_conninfo = %s", [conninfo])
    _run(hostname, port, "SELECT pg_reload_conf()")


def postmaster_start(hostname: str, port: int) -> tuple[bool, datetime]:
    """(in recovery?, when its PostgreSQL started)."""
    row = _run(hostname, port, "SELECT pg_is_in_recovery(), pg_postmaster_start_time()")
    return bool(row[0]), row[1]


def reload(hostname: str, port: int) -> None:
    """pg_reload_conf(): besides the configuration, wakes a standby's WAL replay."""
    _run(hostname, port, "SELECT pg_reload_conf()")


def wal_receiver(hostname: str, port: int) -> tuple[str, str, int] | None:
    """(status, sender host, sender port) of the replica's WAL receiver, or None."""
    row = _run(hostname, port, "SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
    return (row[0], row[1] or "", row[2] or 0) if row else None


def pending_restart(hostname: str, port: int) -> list[str]:
    """The settings changed in the configuration that take effect only at a restart."""
    row = _run(
        hostname,
        port,
        "SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM pg_settings "
        "WHERE pending_restart",
    )
    return list(row[0]) if row else []


SETTING_ROW = """
SELECT name, setting, unit, vartype, context, min_val, max_val,
       coalesce(enumvals, '{}'), pending_restart,
       current_setting(name)
  FROM pg_settings WHERE name = %s
"""


def setting(hostname: str, port: int, name: str) -> tuple[SettingRow, bool, str] | None:
    """(the pg_settings row, its pending_restart, SHOW's text) of one parameter, or None
    when this server has no such parameter."""
    row = _run(hostname, port, SETTING_ROW, [name])
    if row is None:
        return None
    name, value, unit, vartype, context, low, high, enumvals, pending, shown = row
    return (
        SettingRow(name, value or "", unit, vartype, context, low, high, tuple(enumvals)),
        bool(pending),
        shown or "",
    )


NON_DEFAULT_SETTINGS = """
SELECT name, coalesce(setting, ''), coalesce(unit, ''), source, pending_restart,
       coalesce(current_setting(name, true), '')
  FROM pg_settings
 -- Neither the built-in default nor this connection's own (client, session) values; a
 -- setting written but waiting for a restart counts even while its old value is default.
 WHERE source NOT IN ('default', 'override', 'client', 'session') OR pending_restart
 ORDER BY name
"""


def non_default_settings(
    hostname: str, port: int, timeout: float
) -> list[tuple[str, str, str, str, bool, str]]:
    """(name, setting, unit, source, pending_restart, SHOW's text) of every setting that
    is not PostgreSQL's built-in default, bounded by `timeout` to connect and to answer."""
    conn = connect(hostname, port, statement_timeout=timeout, connect_timeout=max(1, int(timeout)))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(NON_DEFAULT_SETTINGS)
            return [tuple(row) for row in cur.fetchall()]
    except psycopg2.Error as exc:
        raise ProbeError(f"{hostname}:{port}", _first_line(exc)) from None
    finally:
        conn.close()


def alter_system(hostname: str, port: int, name: str, value: str) -> None:
    """ALTER SYSTEM SET name = 'value', then pg_reload_conf(). The name is a checked
    parameter name (settings_planning.check_name), quoted as identifiers; the value is a
    literal: nothing of either reaches a command line."""
    target = sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))
    conn = connect(hostname, port)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(target, sql.Literal(value)))
            cur.execute("SELECT pg_reload_conf()")
    except psycopg2.Error as exc:
        raise ProbeError(f"{hostname}:{port}", _first_line(exc)) from None
    finally:
        conn.close()


def checkpoint(hostname: str, port: int) -> None:
    _run(hostname, port, "CHECKPOINT")


def end_kept_sessions(hostname: str, port: int) -> int:
    """End every worker's kept health connection to this instance (a smart stop waits for
    all clients to leave); returns how many were ended."""
    forget_kept(hostname, port)
    row = _run(
        hostname,
        port,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        [KEPT_APPLICATION_NAME],
    )
    return int(row[0]) if row else 0


# --- rebuild, remaster, init (instances/rebuild.py) ----------------------------------------


@dataclass(frozen=True)
class ControlFacts:
    """What a rebuild needs to know about its upstream."""

    system_identifier: str
    timeline: int
    oldest_wal: str | None  # name of the oldest segment file in pg_wal
    database_size: int  # bytes, all databases


def control_facts(hostname: str, port: int) -> ControlFacts:
    row = _run(
        hostname,
        port,
        """
        SELECT (SELECT system_identifier::text FROM pg_control_system()),
               (SELECT timeline_id FROM pg_control_checkpoint()),
               (SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'),
               (SELECT sum(pg_database_size(oid))::bigint FROM pg_database)
        """,
    )
    return ControlFacts(
        system_identifier=row[0], timeline=row[1], oldest_wal=row[2], database_size=row[3] or 0
    )


def replication_position(hostname: str, port: int) -> tuple[bool, str, str | None, int]:
    """(in recovery, position it can send on, replayed LSN, timeline).

    A primary sends up to its current LSN; a cascading standby up to what it has received
    or replayed, whichever is further (what its walsenders use)."""
    row = _run(
        hostname,
        port,
        """
        SELECT pg_is_in_recovery(),
               CASE WHEN pg_is_in_recovery()
                    THEN GREATEST(coalesce(pg_last_wal_receive_lsn(), '0/0'),
                                  coalesce(pg_last_wal_replay_lsn(), '0/0'))::text
                    ELSE pg_current_wal_lsn()::text END,
               pg_last_wal_replay_lsn()::text,
               (SELECT timeline_id FROM pg_control_checkpoint())
        """,
    )
    return row[0], row[1], row[2], row[3]


class BackupSession:
    """pg_backup_start … pg_backup_stop on one session of the upstream (PostgreSQL 15).

    Used as a context manager: leaving it without `stop()` closes the session, which
    aborts the backup on the server."""

    def __init__(self, hostname: str, port: int, label: str) -> None:
        self.address = f"{hostname}:{port}"
        self.conn = connect(hostname, port)
        try:
            self.conn.autocommit = True
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_backup_start(%s, true)::text", [label])
                self.start_lsn = cur.fetchone()[0]
        except psycopg2.Error as exc:
            self.conn.close()
            raise ProbeError(self.address, _first_line(exc)) from None

    def stop(self) -> tuple[str, str, str]:
        """(stop LSN, backup_label contents, tablespace_map contents)."""
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)")
                lsn, label, spcmap = cur.fetchone()
        except psycopg2.Error as exc:
            raise ProbeError(self.address, _first_line(exc)) from None
        return lsn, label, spcmap or ""

    def __enter__(self) -> BackupSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.conn.close()
