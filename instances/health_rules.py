"""Health decisions: what a sweep writes, how far behind, lagging, streaming. Pure.

Plain functions of plain values (an Instance or any object with the same attributes, and
the probe's answers), unit-tested without the lab (tests/instances/test_health_rules.py);
the sweep that gathers the answers is instances.health.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.db.models import Q

from instances.choices import HerdHealth, ReplicationHealth, Role
from instances.wal import bytes_between

if TYPE_CHECKING:
    pass

LAST_ERROR_MAX = 500  # Instance.last_error's max_length


@dataclass(frozen=True)
class Unreachable:
    """A probe that got no answer: why, as libpq said it (it names host and port)."""

    error: str


Outcome = "ProbeResult | Unreachable"


class Recorded(Protocol):
    """What observe() reads of an instance row: an Instance, or any plain object."""

    online: bool | None
    role: str
    state_changed_at: datetime | None


# --- decisions (pure) ---------------------------------------------------------------------


def lag_bytes(upstream_lsn: str | None, replayed_lsn: str | None) -> int | None:
    """Bytes a replica still has to replay to reach its upstream's current position.

    Both LSNs are read within one sweep but not at one instant: a replica that replayed
    past the point where its upstream was read is 0 bytes behind, never negative. None
    when either position is not known.
    """
    return bytes_between(upstream_lsn, replayed_lsn)


def state_changed(
    recorded_online: bool | None, recorded_role: str, online: bool, role: str
) -> bool:
    """Whether the online state or the role differs from what was recorded.

    A first observation (online or role not known before) is not a change: the
    "changed recently" mark is for an instance that went down, came back or switched role.
    """
    online_flipped = recorded_online is not None and recorded_online != online
    role_flipped = recorded_role != Role.UNKNOWN and recorded_role != role
    return online_flipped or role_flipped


def is_lagging(
    lag_bytes: int | None,
    lag_seconds: float | None,
    *,
    max_bytes: int | None = None,
    max_seconds: float | None = None,
) -> bool:
    """Past HEALTH_LAG_BYTES or HEALTH_LAG_SECONDS (strictly); unknown lag is not lagging."""
    max_bytes = settings.HEALTH_LAG_BYTES if max_bytes is None else max_bytes
    max_seconds = settings.HEALTH_LAG_SECONDS if max_seconds is None else max_seconds
    return (lag_bytes is not None and lag_bytes > max_bytes) or (
        lag_seconds is not None and lag_seconds > max_seconds
    )


def streaming(in_recovery: bool, wal_receiver_status: str | None) -> bool | None:
    """A replica's WAL receiver is streaming; None for a primary, or when the probe role
    may not see pg_stat_wal_receiver (grant it pg_read_all_stats)."""
    if not in_recovery or wal_receiver_status == "unknown":
        return None
    return wal_receiver_status == "streaming"


def replication_health(instance: Any) -> ReplicationHealth | None:
    """A replica's replication as recorded; None for anything that is not a replica.

    Reads instance.upstream (select_related it for lists: upstream__server).
    The order matters: an offline upstream explains a receiver that is not streaming.
    """
    if instance.role != Role.REPLICA:
        return None
    upstream = instance.upstream if instance.upstream_id else None
    if instance.needs_remaster or (upstream is not None and upstream.fenced):
        return ReplicationHealth.UPSTREAM_WRONG
    if instance.online is not True:
        return ReplicationHealth.UNKNOWN
    if upstream is not None and upstream.online is False:
        return ReplicationHealth.UPSTREAM_GONE
    if instance.upstream_streaming is False:
        return ReplicationHealth.NOT_STREAMING
    if is_lagging(instance.lag_bytes, instance.lag_seconds):
        return ReplicationHealth.LAGGING
    if instance.upstream_streaming:
        return ReplicationHealth.STREAMING
    return ReplicationHealth.UNKNOWN


def replication_q(state: str) -> Q:
    """The same classification as replication_health(), as a filter on Instance."""
    wrong = Q(role=Role.REPLICA) & (Q(needs_remaster=True) | Q(upstream__fenced=True))
    if state == ReplicationHealth.UPSTREAM_WRONG:
        return wrong
    replica = Q(role=Role.REPLICA) & ~wrong
    online = replica & Q(online=True)
    gone = Q(upstream__online=False)
    lagging = Q(lag_bytes__gt=settings.HEALTH_LAG_BYTES) | Q(
        lag_seconds__gt=settings.HEALTH_LAG_SECONDS
    )
    not_streaming = Q(upstream_streaming=False)
    if state == ReplicationHealth.UPSTREAM_GONE:
        return online & gone
    if state == ReplicationHealth.NOT_STREAMING:
        return online & ~gone & not_streaming
    if state == ReplicationHealth.LAGGING:
        return online & ~gone & ~not_streaming & lagging
    if state == ReplicationHealth.STREAMING:
        return online & ~gone & Q(upstream_streaming=True) & ~lagging
    if state == ReplicationHealth.UNKNOWN:
        return replica & (~Q(online=True) | (~gone & Q(upstream_streaming__isnull=True) & ~lagging))
    raise ValueError(f"unknown replication state {state!r}")


def herd_health(
    *,
    total: int,
    offline: int,
    broken: int,
    lagging: int,
    unknown: int,
    online_primaries: int,
) -> HerdHealth:
    """A herd's state from its members' counts (herd_health_annotations() and
    Herd.with_summary()'s online_primary_count), the worst that applies.

    `broken`: replicas not streaming, whose upstream is gone or wrong; `unknown`: members
    whose online state was never checked.
    """
    if total <= 0:
        return HerdHealth.EMPTY
    if online_primaries > 1:
        return HerdHealth.SPLIT_BRAIN
    # Only when something was checked: a herd nobody has polled yet is unknown, not down.
    if online_primaries == 0 and unknown < total:
        return HerdHealth.NO_PRIMARY
    if offline or broken:
        return HerdHealth.DEGRADED
    if lagging:
        return HerdHealth.LAGGING
    if unknown:
        return HerdHealth.UNKNOWN
    return HerdHealth.HEALTHY


def observe(
    recorded: Recorded, outcome: Outcome, upstream: Outcome | None, now: datetime
) -> dict[str, Any]:
    """The fields to write on one instance after a sweep, and their values.

    `upstream` is what its recorded upstream answered in the same sweep (None: it has
    none). Only what was checked is written: an instance that did not answer gets
    online=False and the reason, and keeps its role, LSNs and lag.
    """
    if isinstance(outcome, Unreachable):
        changed = state_changed(recorded.online, recorded.role, False, recorded.role)
        return {
            "online": False,
            "last_error": outcome.error[:LAST_ERROR_MAX],
            "last_checked": now,
            # Whether it streams cannot be known while it does not answer.
            "upstream_streaming": None,
            "state_changed_at": now if changed else recorded.state_changed_at,
        }
    role = Role.REPLICA if outcome.in_recovery else Role.PRIMARY
    changed = state_changed(recorded.online, recorded.role, True, role)
    fields: dict[str, Any] = {
        "online": True,
        "role": role,
        "last_error": "",
        "last_checked": now,
        "state_changed_at": now if changed else recorded.state_changed_at,
        "last_lsn": outcome.lsn,
        "receive_lsn": outcome.receive_lsn or "",
        "replay_lsn": outcome.replay_lsn or "",
        "pending_restart": (outcome.pending_restart or "")[:500],
        "timeline": outcome.timeline,
    }
    if role == Role.PRIMARY:
        # A primary has no upstream (a check constraint holds it): a replica promoted
        # outside ElepHaaS loses its link here, as it did on the server.
        fields.update(
            upstream=None,
            streams_from="",
            lag_bytes=None,
            lag_seconds=None,
            upstream_streaming=None,
        )
        return fields
    answered = upstream is not None and not isinstance(upstream, Unreachable)
    upstream_lsn = upstream.lsn if answered else None
    fields.update(
        # Not measured when its upstream did not answer (or is not in the inventory):
        # blank rather than a figure from another moment.
        lag_bytes=lag_bytes(upstream_lsn, outcome.replay_lsn or outcome.lsn),
        lag_seconds=outcome.lag_seconds,
        upstream_streaming=streaming(True, outcome.wal_receiver_status),
    )
    return fields
