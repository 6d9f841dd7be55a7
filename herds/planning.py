"""Planning switchovers and failovers: pure functions from a snapshot to a plan.

No I/O here. The job takes a live snapshot of the herd (every instance probed), asks for a
plan, stores the plan's sentence, and carries the steps out; the confirmation page asks
the same functions with the inventory's last recorded state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from instances.choices import JobKind
from instances.wal import format_bytes, int_to_lsn


@dataclass(frozen=True)
class Member:
    """One instance of the herd as the snapshot saw it."""

    id: int
    label: str  # "orders on 127.0.1.2:5432"
    hostname: str
    answering: bool  # SQL probe answered
    in_recovery: bool | None = None
    current_lsn: int | None = None  # primary: pg_current_wal_lsn
    receive_lsn: int | None = None  # replica: last WAL received
    replay_lsn: int | None = None  # replica: last WAL replayed
    dr_candidate: bool = False
    priority: int = 1000
    fenced: bool = False
    environment: str = ""  # its server's environment

    @property
    def best_lsn(self) -> int:
        """How far its WAL reaches: what a promotion would keep."""
        values = [v for v in (self.current_lsn, self.receive_lsn, self.replay_lsn) if v]
        return max(values) if values else 0


@dataclass(frozen=True)
class Snapshot:
    herd: str
    primary: Member | None  # the recorded primary
    replicas: tuple[Member, ...]
    vhost: str = ""
    environment: str = ""  # the herd's own environment
    last_known_primary_lsn: int | None = None  # the primary's last recorded position
    # How long ago that position was recorded (seconds), to say how stale it is.
    last_seen_seconds: float | None = None
    # The old primary's true end of WAL, read from its data directory: only this proves a
    # loss; a recorded position is a lower bound (the primary may have written after it).
    primary_end_of_wal: int | None = None
    # That end was read and the old primary's pg_wal can be copied from (its server
    # answers SSH, PostgreSQL is stopped there): a failover salvages what the candidate
    # lacks instead of losing it.
    salvage_possible: bool = False


@dataclass
class Plan:
    kind: str
    herd: str
    ok: bool
    sentence: str
    candidate: Member | None = None
    steps: list[str] = field(default_factory=list)
    dns_from: str = ""
    dns_to: str = ""
    data_loss_bytes: int | None = None
    # True only when data_loss_bytes was measured against the old primary's end of WAL;
    # otherwise it is a lower bound (or None: unknown).
    loss_exact: bool = False
    needs_accept_loss: bool = False
    # A failover that first copies this much WAL from the old primary's pg_wal to the
    # candidate and waits for its replay (0 or None: nothing to salvage).
    salvage_bytes: int | None = None


def _rank(member: Member) -> tuple:
    """Most up-to-date first; ties: acknowledged DR candidate, lower priority, then id."""
    return (-member.best_lsn, not member.dr_candidate, member.priority, member.id)


def _usable(replicas: tuple[Member, ...]) -> list[Member]:
    return [r for r in replicas if r.answering and r.in_recovery and not r.fenced]


def fit_replicas(snap: Snapshot) -> list[Member]:
    """The replicas a DBA may choose as the target, most up-to-date first."""
    return sorted(_usable(snap.replicas), key=_rank)


def _why_not(snap: Snapshot, target_id: int) -> str:
    """Why the confirmed target cannot be promoted now, in words."""
    target = next((r for r in snap.replicas if r.id == target_id), None)
    if target is None:
        return "the chosen target is no longer a replica of this herd"
    if target.fenced:
        return f"{target.label} is fenced"
    if not target.answering:
        return f"{target.label} no longer answers"
    return f"{target.label} is no longer in recovery (not a replica)"


def _confirmed(snap: Snapshot, usable: list[Member], target_id: int) -> Member | str:
    """The DBA's confirmed target if it is fit now, else the refusal sentence."""
    for member in usable:
        if member.id == target_id:
            return member
    return (
        f"refused: {_why_not(snap, target_id)}: nothing done (the target the DBA confirmed "
        "is never replaced by another)"
    )


def repoint_steps(others: list[Member]) -> list[str]:
    """Each other replica's step: repointed now, or, when it does not answer (or is
    fenced), named so that nobody forgets it still follows the old primary."""
    steps = []
    for replica in others:
        if replica.fenced:
            steps.append(f"{replica.label} is fenced: left as it is (rebuild it)")
        elif not replica.answering:
            steps.append(
                f"{replica.label} not answering: will need a remaster once it is back "
                "(it would still stream from the old primary)"
            )
        else:
            steps.append(f"point {replica.label} at the new primary")
    return steps


def _switchover_rank(snap: Snapshot):
    """A planned switchover stays in the herd's own environment unless the DBA picks the
    DR copy: same environment first, then the most replayed."""

    def rank(member: Member) -> tuple:
        away = bool(snap.environment) and member.environment != snap.environment
        return (away, *_rank(member))

    return rank


def plan_switchover(
    snap: Snapshot, target_id: int | None = None, max_lag_bytes: int | None = None
) -> Plan:
    """A planned switchover: the primary is healthy; no committed transaction may be lost.
    A target more than `max_lag_bytes` behind is refused (the primary would stay stopped
    while it replays)."""
    refuse = Plan(JobKind.SWITCHOVER, snap.herd, ok=False, sentence="")
    primary = snap.primary
    if primary is None:
        refuse.sentence = f"refused: {snap.herd} has no recorded primary"
        return refuse
    if not primary.answering or primary.in_recovery:
        refuse.sentence = (
            f"refused: the primary {primary.label} is not answering as a primary; "
            "a switchover needs a healthy primary (use a failover)"
        )
        return refuse
    usable = _usable(snap.replicas)
    if target_id is not None:
        chosen = _confirmed(snap, usable, target_id)
        if isinstance(chosen, str):
            refuse.sentence = chosen
            return refuse
        candidate, why = chosen, "the target the DBA confirmed"
    elif not usable:
        refuse.sentence = f"refused: {snap.herd} has no answering replica to switch over to"
        return refuse
    else:
        candidate = sorted(usable, key=_switchover_rank(snap))[0]
        why = "the replica with the highest replayed LSN" if len(usable) > 1 else "its replica"
        if len(usable) > 1 and snap.environment and candidate.environment == snap.environment:
            why += f" in the herd's own environment {snap.environment}"
    behind = max(0, (primary.current_lsn or 0) - (candidate.replay_lsn or 0))
    if max_lag_bytes is not None and behind > max_lag_bytes:
        refuse.sentence = (
            f"refused: {candidate.label} is now {format_bytes(behind)} behind the primary "
            f"(limit {format_bytes(max_lag_bytes)}, ELEPHAAS_SWITCHOVER_MAX_LAG_BYTES): "
            "nothing done; wait until it catches up"
        )
        return refuse
    others = [r for r in snap.replicas if r.id != candidate.id]
    plan = Plan(
        JobKind.SWITCHOVER,
        snap.herd,
        ok=True,
        candidate=candidate,
        data_loss_bytes=0,
        sentence=(
            f"switch {snap.herd} over to {candidate.label}: {why}, replayed "
            f"{int_to_lsn(candidate.replay_lsn or 0)}, {format_bytes(behind)} behind the "
            f"primary's {int_to_lsn(primary.current_lsn or 0)}"
        ),
        dns_from=primary.hostname,
        dns_to=candidate.hostname,
    )
    plan.steps = [
        f"checkpoint and stop the primary {primary.label} cleanly (fast)",
        f"wait until {candidate.label} has replayed the old primary's final checkpoint",
        f"promote {candidate.label} and check it accepts writes",
        (
            f"point {snap.vhost} at {candidate.hostname} (was {primary.hostname})"
            if snap.vhost
            else "no vhost: DNS unchanged"
        ),
        *repoint_steps(others),
        f"rewind {primary.label} if needed and start it as a replica of the new primary",
    ]
    return plan


def _loss(snap: Snapshot, candidate: Member) -> tuple[int | None, bool, str]:
    """(bytes lost, proved?, how to say it). Proved only against the old primary's end of
    WAL; its last recorded position only bounds the loss from below."""
    end = snap.primary_end_of_wal
    if end is not None:
        loss = max(0, end - candidate.best_lsn)
        where = f"the old primary's end of WAL {int_to_lsn(end)}, read from its data directory"
        if loss == 0:
            return 0, True, f"0 bytes lost: it has all WAL up to {where}"
        if snap.salvage_possible:
            return (
                0,
                True,
                f"0 bytes lost once the {format_bytes(loss)} of WAL it lacks is salvaged "
                f"from the old primary's pg_wal (up to {where})",
            )
        return loss, True, f"{format_bytes(loss)} lost: it is that far behind {where}"
    known = snap.last_known_primary_lsn
    if known is None:
        return None, False, "the primary's last position is unknown: the loss cannot be bounded"
    loss = max(0, known - candidate.best_lsn)
    age = snap.last_seen_seconds
    seen = f", {age:.0f} s ago" if age is not None else ""
    return (
        loss,
        False,
        f"at least {format_bytes(loss)} lost (primary last seen at {int_to_lsn(known)}{seen}); "
        "the true loss is unknown",
    )


def plan_failover(
    snap: Snapshot,
    *,
    max_loss_bytes: int,
    accept_loss: bool = False,
    target_id: int | None = None,
) -> Plan:
    """A DR failover: the primary is down or unreachable; promote the most up-to-date
    replica, or exactly the target the DBA confirmed (refused, never replaced)."""
    refuse = Plan(JobKind.FAILOVER, snap.herd, ok=False, sentence="")
    primary = snap.primary
    if primary is not None and primary.answering and not primary.in_recovery:
        refuse.sentence = (
            f"refused: the primary {primary.label} is up and answering; use a "
            "planned switchover (no data loss) or stop it first"
        )
        return refuse
    usable = _usable(snap.replicas)
    if not usable:
        refuse.sentence = f"refused: {snap.herd} has no answering replica to promote"
        return refuse
    best = sorted(usable, key=_rank)[0]
    candidate = best
    if target_id is not None:
        chosen = _confirmed(snap, usable, target_id)
        if isinstance(chosen, str):
            refuse.sentence = chosen
            return refuse
        candidate = chosen
    loss, exact, loss_text = _loss(snap, candidate)
    if candidate.id != best.id and best.best_lsn > candidate.best_lsn:
        loss_text += (
            f" (the DBA's choice: {best.label} has "
            f"{format_bytes(best.best_lsn - candidate.best_lsn)} more)"
        )
    salvage = 0
    if snap.salvage_possible and snap.primary_end_of_wal is not None:
        salvage = max(0, snap.primary_end_of_wal - candidate.best_lsn)
    tie_note = ""
    equal = [r for r in usable if r.best_lsn == candidate.best_lsn and r.id != candidate.id]
    if equal:
        tie_note = (
            ", acknowledged DR candidate"
            if candidate.dr_candidate
            else f", priority {candidate.priority}"
        ) + " among equals"
    how = "the target the DBA confirmed, received" if target_id is not None else "highest received"
    plan = Plan(
        JobKind.FAILOVER,
        snap.herd,
        ok=True,
        candidate=candidate,
        data_loss_bytes=loss,
        loss_exact=exact,
        salvage_bytes=salvage,
        sentence=(
            f"promote {candidate.label}: {how} LSN {int_to_lsn(candidate.best_lsn)}"
            f"{tie_note if target_id is None else ''}, {loss_text}"
        ),
        dns_from=primary.hostname if primary else "",
        dns_to=candidate.hostname,
    )
    # A loss that is not proved counts as over the limit, whatever its lower bound.
    if not exact or loss > max_loss_bytes:
        plan.needs_accept_loss = True
        if not accept_loss:
            plan.ok = False
            limit = format_bytes(max_loss_bytes)
            why = (
                f"that loses more than the {limit} allowed"
                if exact
                else f"the loss is not known to be within the {limit} allowed"
            )
            plan.sentence = (
                f"refused: {plan.sentence}; {why}: tick 'accept data loss' to fail over anyway"
            )
            return plan
    others = [r for r in snap.replicas if r.id != candidate.id]
    old = primary.label if primary else "the old primary"
    plan.steps = [
        *(
            [
                f"copy the {format_bytes(salvage)} of WAL {candidate.label} lacks from "
                f"{old}'s pg_wal and wait until it has replayed up to "
                f"{int_to_lsn(snap.primary_end_of_wal or 0)}; if that fails, plan again "
                "without it (the loss rules apply)"
            ]
            if salvage
            else []
        ),
        f"fence {old}: stop it if its server answers, else mark it fenced",
        f"promote {candidate.label} and check it accepts writes",
        (
            f"point {snap.vhost} at {candidate.hostname}"
            if snap.vhost
            else "no vhost: DNS unchanged"
        ),
        *repoint_steps(others),
        f"mark {old} as needing a rebuild",
    ]
    return plan
