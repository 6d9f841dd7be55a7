"""Rebuild, remaster and init: the pure part (parsing, decisions, sentences). No I/O.

`instances/rebuild.py` gathers the facts over SSH and SQL, asks these functions what to
do, records the sentence on the job and carries it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from instances.choices import CopyMethod
from instances.controldata import ControlData, ParseError
from instances.wal import format_bytes, int_to_lsn

METHODS = CopyMethod.requestable()
PG_REWIND = CopyMethod.PG_REWIND
PG_BASEBACKUP = CopyMethod.PG_BASEBACKUP
RSYNC = CopyMethod.RSYNC

# What a full copy with rsync must not bring over from the upstream (or must bring in a
# controlled way): the same list pg_basebackup leaves out. Anchored at the data directory.
RSYNC_EXCLUDES = (
    "/postmaster.pid",
    "/postmaster.opts",
    "/pg_wal/*",
    "/pg_replslot/*",
    "/pg_dynshmem/*",
    "/pg_notify/*",
    "/pg_serial/*",
    "/pg_snapshots/*",
    "/pg_stat_tmp/*",
    "/pg_subtrans/*",
    "pgsql_tmp*",
    # The replica keeps its own ALTER SYSTEM settings (primary_conninfo is rewritten
    # afterwards in any case); the upstream's may name itself as its upstream.
    "/postgresql.auto.conf",
    "/standby.signal",
    "/recovery.signal",
    "/backup_label",
    "/backup_label.old",
    "/tablespace_map",
)


# --- choosing the method --------------------------------------------------------------------


@dataclass(frozen=True)
class RebuildFacts:
    requested: str  # one of METHODS
    control: ControlData | None  # None: pg_controldata could not read the data directory
    control_error: str
    upstream_system_identifier: str
    upstream_oldest_segment: int | None  # segment number of its oldest file in pg_wal
    upstream_timeline: int | None
    unfinished_job: int | None = None  # a rebuild of it that did not finish


@dataclass(frozen=True)
class Decision:
    method: str
    reason: str

    @property
    def sentence(self) -> str:
        return f"method: {self.method} because {self.reason}"


def choose_method(facts: RebuildFacts) -> Decision:
    """pg_rewind when it can work, else a full copy (pg_basebackup unless rsync is asked)."""
    if facts.requested not in METHODS:
        raise ValueError(f"method {facts.requested!r} is not one of {', '.join(METHODS)}")
    if facts.requested != CopyMethod.AUTO:
        return Decision(facts.requested, "the DBA asked for a full copy with it")
    if facts.unfinished_job is not None:
        # A half-copied directory can have a valid control file and the herd's system
        # identifier: pg_rewind would "succeed" on data that is not all there.
        return Decision(
            PG_BASEBACKUP,
            f"the rebuild of job {facts.unfinished_job} did not finish: its data directory "
            "is incomplete, only a full copy repairs it",
        )
    control = facts.control
    if control is None:
        return Decision(
            PG_BASEBACKUP,
            f"pg_controldata cannot read its data directory ({facts.control_error}): "
            "it is damaged or missing",
        )
    if control.system_identifier != facts.upstream_system_identifier:
        return Decision(
            PG_BASEBACKUP,
            f"its system identifier {control.system_identifier} differs from the upstream's "
            f"{facts.upstream_system_identifier}: it is not a copy of this herd's data",
        )
    if not control.rewindable:
        return Decision(
            PG_BASEBACKUP, "neither data checksums nor wal_log_hints are on: pg_rewind cannot work"
        )
    if (
        control.redo_lsn is not None
        and facts.upstream_oldest_segment is not None
        and control.timeline == facts.upstream_timeline
    ):
        needed = control.redo_lsn // control.segment_size
        if needed < facts.upstream_oldest_segment:
            return Decision(
                PG_BASEBACKUP,
                f"it needs WAL from its last checkpoint (redo {int_to_lsn(control.redo_lsn)}) "
                "that the upstream has already removed: too far behind to catch up",
            )
    return Decision(
        PG_REWIND,
        f"same system identifier as the upstream ({control.system_identifier}), "
        + ("data checksums" if control.checksum_version else "wal_log_hints")
        + " on, cluster state "
        + repr(control.state),
    )


def rebuild_refusal(
    *,
    label: str,
    recorded_primary: bool,
    live_primary: bool,
    downstreams: list[str],
    fenced: bool,
    force: bool,
    unfinished: bool = False,
) -> str | None:
    """Why a rebuild must not run without `force`, or None.

    A fenced old primary (after a failover) and a half-copied instance (a rebuild that did
    not finish) are what a rebuild is for: they are not refused."""
    if force or unfinished:
        return None
    if live_primary:
        return (
            f"{label} is running as a primary (not in recovery): a rebuild would throw its "
            "data away; tick 'force' if that is really what you want"
        )
    if recorded_primary and not fenced:
        return (
            f"{label} is recorded as the herd's primary: a rebuild would throw its data "
            "away; tick 'force' if that is really what you want"
        )
    if downstreams:
        return (
            f"{label} has replicas of its own ({', '.join(downstreams)}): they would lose "
            "their upstream during the rebuild; remaster them first or tick 'force'"
        )
    return None


# --- remaster -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    label: str
    in_recovery: bool
    lsn: int  # what it can send on: current LSN (primary), max(received, replayed) (replica)
    timeline: int


def remaster_refusal(replica: Position, replica_replayed: int, upstream: Position) -> str | None:
    """Why `replica` cannot follow `upstream`, or None.

    A cascading standby sends on the WAL it has received and flushed, not only what it
    has replayed, so its position is the larger of the two (GetStandbyFlushRecPtr)."""
    if upstream.timeline < replica.timeline:
        return (
            f"{upstream.label} is on timeline {upstream.timeline}, behind {replica.label} "
            f"(timeline {replica.timeline}): it cannot send the WAL it needs"
        )
    if upstream.timeline == replica.timeline and upstream.lsn < replica_replayed:
        return (
            f"{upstream.label} is behind {replica.label}: it is at {int_to_lsn(upstream.lsn)}, "
            f"the replica already replayed {int_to_lsn(replica_replayed)}; wait until it "
            "has caught up, or choose another upstream"
        )
    return None


# --- progress -------------------------------------------------------------------------------

_RSYNC_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d{1,3})%\s+([\d.]+)([kMGT]?B)/s")
_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None
    percent: int
    rate: float | None = None  # bytes per second

    def describe(self) -> str:
        text = format_bytes(self.done)
        if self.total:
            text += f" of {format_bytes(self.total)}"
        text += f" ({self.percent}%)"
        if self.rate is not None:
            text += f", {format_bytes(int(self.rate))}/s"
        return text


def parse_rsync_progress(text: str) -> Progress | None:
    """The last `--info=progress2` line in rsync's output (lines end in \\r), or None."""
    for line in reversed(re.split(r"[\r\n]+", text)):
        found = _RSYNC_PROGRESS.match(line)
        if found:
            done = int(found.group(1).replace(",", ""))
            rate = float(found.group(3)) * _UNITS[found.group(4)]
            return Progress(done=done, total=None, percent=int(found.group(2)), rate=rate)
    return None


def parse_du(text: str) -> int:
    """`du -sb DIR` → bytes."""
    first = text.strip().split(None, 1)
    if not first or not first[0].isdigit():
        raise ParseError(f"du printed no size: {text.strip()[:80]!r}")
    return int(first[0])


def copy_progress(done: int, total: int | None, rate: float | None) -> Progress:
    """Progress of a copy measured by size on disk against the upstream's database size:
    never shown as 100% before the copy has ended (WAL and free space make it inexact)."""
    percent = min(99, done * 100 // total) if total else 0
    return Progress(done=done, total=total, percent=percent, rate=rate)


def job_percent(copy_percent: int, start: int = 5, end: int = 85) -> int:
    """Map a copy's percentage onto the job's: the copy is most, not all, of a rebuild."""
    return start + (end - start) * max(0, min(100, copy_percent)) // 100
