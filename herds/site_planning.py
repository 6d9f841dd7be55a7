"""The pre-flight gates of a site drill ("Move to DR site", "Fail back"): pure, no I/O.

herds.site_drill gathers the facts live (a probe of every member, the DNS server, the jobs
table) and asks `gates` for one pass or fail line per gate; the confirmation page shows
them, and a herd goes into the campaign only when all its gates pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from herds.planning import Snapshot
from instances.wal import format_bytes


@dataclass(frozen=True)
class Gate:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Facts:
    """What was seen live for one herd, besides its snapshot."""

    target_id: int | None  # the instance it goes to (None: there is none)
    target_why: str  # why this one (or why there is none)
    versions: Mapping[int, int] = field(default_factory=dict)  # id → server_version_num
    receiver: Mapping[int, str | None] = field(default_factory=dict)  # id → WAL receiver
    busy: Sequence[str] = ()  # the herd's queued or running jobs, as labels
    dns_error: str | None = None  # None: the DNS server accepted the signed no-op update
    dns_seconds: float | None = None


def major(version_num: int | None) -> int | None:
    """150004 → 15; 90624 → 9 (before 10 the major was two numbers: 9.6 → 9)."""
    if not version_num:
        return None
    return version_num // 10000


def gates(snap: Snapshot, facts: Facts, *, max_lag_bytes: int) -> list[Gate]:
    """One line per gate, in the order a DBA reads them."""
    result = []
    target = next((r for r in snap.replicas if r.id == facts.target_id), None)
    primary = snap.primary
    if target is None and primary is not None and primary.id == facts.target_id:
        why = f"{primary.label} is already the primary ({facts.target_why}): nothing to move"
    elif target is None:
        why = facts.target_why
    else:
        why = f"{target.label}: {facts.target_why}"
    result.append(Gate("target", target is not None, why))
    # The candidate answers and streams, not too far behind.
    if target is None:
        result.append(Gate("streams", False, "no target to check"))
    elif not target.answering:
        result.append(Gate("streams", False, f"{target.label} does not answer"))
    elif not target.in_recovery:
        result.append(Gate("streams", False, f"{target.label} is not in recovery"))
    elif target.fenced:
        result.append(Gate("streams", False, f"{target.label} is fenced"))
    elif facts.receiver.get(target.id) != "streaming":
        status = facts.receiver.get(target.id) or "no WAL receiver"
        result.append(Gate("streams", False, f"{target.label} is not streaming ({status})"))
    elif primary is None or not primary.answering or primary.in_recovery:
        result.append(
            Gate("streams", False, "the primary does not answer as a primary: use a failover")
        )
    else:
        behind = max(0, (primary.current_lsn or 0) - (target.replay_lsn or 0))
        result.append(
            Gate(
                "streams",
                behind <= max_lag_bytes,
                f"streaming, {format_bytes(behind)} behind (limit {format_bytes(max_lag_bytes)})",
            )
        )
    # Same major version: a promotion across majors would leave clients on another server.
    primary_major = major(facts.versions.get(primary.id)) if primary else None
    target_major = major(facts.versions.get(target.id)) if target else None
    if primary_major is None or target_major is None:
        result.append(Gate("version", False, "the major versions could not be read"))
    else:
        result.append(
            Gate(
                "version",
                primary_major == target_major,
                f"PostgreSQL {primary_major} on both"
                if primary_major == target_major
                else f"primary {primary_major}, target {target_major}",
            )
        )
    if not snap.vhost:
        result.append(Gate("DNS", True, "no vhost: nothing to update"))
    elif facts.dns_error is None:
        took = f" ({facts.dns_seconds * 1000:.0f} ms)" if facts.dns_seconds is not None else ""
        result.append(Gate("DNS", True, f"the DNS server accepts the TSIG key{took}"))
    else:
        result.append(Gate("DNS", False, facts.dns_error))
    result.append(
        Gate(
            "no job",
            not facts.busy,
            "no job queued or running on the herd"
            if not facts.busy
            else "busy: " + ", ".join(facts.busy[:3]),
        )
    )
    return result
