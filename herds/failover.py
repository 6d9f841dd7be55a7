"""The DR failover: the primary is down or unreachable; promote the best replica."""

from __future__ import annotations

import dataclasses

from django.utils import timezone

from herds import drill as drills
from herds import snapshot
from herds.models import Drill
from instances import steps
from instances.choices import ClusterState, JobKind, Role
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.wal import format_bytes, int_to_lsn


def fence(ctx: JobContext, old: Instance, drill: Drill, *, was_stopped: bool) -> str:
    """Make sure the old primary cannot take writes again. Its server answers: stop it,
    keep it from starting (fence marker, start.conf manual). It does not: the environment's
    fencing command, and the inventory's flag; the health sweep finishes the fence when the
    server answers again. Returns what was done, in words (also on the drill)."""
    Instance.objects.filter(pk=old.pk).update(
        fenced=True,
        needs_rebuild=True,
        online=False,
        fence_confirmed_at=None,
        state_changed_at=timezone.now(),
    )
    try:
        found = steps.fence_on_server(ctx, old)
    except JobFailed as exc:
        # Its server does not answer: the step recorded why; the failover goes on.
        hook = steps.fencing_command(ctx, old)
        outcome = (
            f"{old.label} could not be reached to stop it ({exc}); {hook}; it is marked "
            "fenced in the inventory and the health sweep stops it when its server answers"
        )
    else:
        if was_stopped and found == ClusterState.RUNNING:
            # It started again after its end of WAL was read: what it wrote since is not
            # in the plan. It is stopped now; plan again from its new end of WAL.
            outcome = f"{old.label} had started again during the failover; stopped and fenced"
            drill.fence_outcome = outcome
            drill.save(update_fields=["fence_outcome"])
            drills.finish(drill, "refused: the old primary started again during the failover")
            raise JobFailed(
                f"{old.label} started again while the failover ran (its WAL may have grown "
                "since it was read): it is now stopped and fenced, nothing was promoted; "
                "run the failover again"
            )
        outcome = f"{old.label} stopped and fenced (fence marker, start.conf manual)"
    drill.fence_outcome = outcome[:500]
    drill.save(update_fields=["fence_outcome"])
    return outcome


def salvage(ctx: JobContext, begun: drills.Begun, new: Instance) -> tuple[int, object]:
    """Copy the WAL the candidate lacks from the old primary's pg_wal and wait for its
    replay (steps.salvage_wal). On failure, say why and plan again without salvage from a
    fresh look at the herd: the loss rules decide (refused unless within the limit or
    accepted). Returns (bytes salvaged, the plan to carry out)."""
    plan, old, end = begun.plan, begun.old, begun.end_of_wal
    assert old is not None and end is not None
    try:
        salvaged = steps.salvage_wal(ctx, old, new, end, plan.candidate.best_lsn)
    except JobFailed as exc:
        ctx.note("salvage impossible", f"{exc}; planning again without it")
        snap, _ = drills.live_snapshot(begun.herd)
        snap = dataclasses.replace(snap, primary_end_of_wal=end.lsn, salvage_possible=False)
        again = snapshot.plan(snap, JobKind.FAILOVER, ctx.job.params)
        ctx.note("plan without salvage", "\n".join([again.sentence, *again.steps]))
        if not again.ok or again.candidate.id != plan.candidate.id:
            why = again.sentence if not again.ok else "the best replica changed"
            drills.finish(begun.drill, f"refused after a failed salvage: {why}")
            raise JobFailed(
                f"{begun.herd.name}: the WAL salvage from {old.label} failed ({exc}); "
                f"{why}. Nothing was promoted or fenced; {new.label} keeps whatever WAL was "
                "copied (the old primary's own history: harmless)"
            ) from None
        begun.drill.plan = again.sentence
        begun.drill.save(update_fields=["plan"])
        return 0, again
    ctx.note(
        "salvaged",
        f"{format_bytes(salvaged)} of WAL from {old.label}; {new.label} replayed up to its "
        f"end of WAL {int_to_lsn(end.lsn)}",
    )
    return salvaged, dataclasses.replace(plan, data_loss_bytes=0, loss_exact=True)


@operation(JobKind.FAILOVER)
def failover(ctx: JobContext) -> str:
    """1. live snapshot and plan: the most up-to-date replica, refused past the loss
    threshold unless accepted; the old primary's end of WAL read from its disk when its
    server answers; 2. salvage: the WAL the candidate lacks copied from there, replayed;
    3. fence the old primary; 4. promote, check writes (RTO); 5. DNS; 6. repoint the other
    replicas; the old primary needs a rebuild."""
    begun = drills.begin(ctx, JobKind.FAILOVER)
    herd, plan, instances, drill, old = begun[:5]
    new = instances[plan.candidate.id]
    salvaged = 0
    if plan.salvage_bytes:
        salvaged, plan = salvage(ctx, begun, new)
        if salvaged:
            drill.wal_salvaged_bytes = salvaged
            drill.save(update_fields=["wal_salvaged_bytes"])
    fenced_note = (
        fence(ctx, old, drill, was_stopped=begun.end_of_wal is not None) if old is not None else ""
    )
    lost = plan.data_loss_bytes
    drills.promote(
        ctx,
        herd,
        new,
        drill,
        lost,
        int_to_lsn(begun.end_of_wal.lsn if salvaged else plan.candidate.best_lsn),
        "the old primary is fenced",
        lost_exact=plan.loss_exact,
    )

    def rest() -> str:
        problem = drills.move_dns(ctx, herd, new, drill)
        for other in instances.values():
            if old is not None and other.pk == old.pk:
                continue
            if other.pk != new.pk and other.role == Role.REPLICA and not other.fenced:
                live, _ = steps.try_probe(other)
                if live is not None:
                    drills.repoint(ctx, other, new)
                else:
                    ctx.note(
                        f"{other.label} not answering",
                        "not repointed: it still follows the old primary; remaster it once "
                        "it is back",
                    )
                    Instance.objects.filter(pk=other.pk).update(needs_remaster=True)
        return "; ".join(p for p in (problem, drills.move_ro_dns(ctx, herd)) if p)

    dns_problem = drills.after_promotion(ctx, herd, new, drill, rest)
    if lost is None:
        lost_text = "loss unknown (no last known primary position)"
    elif plan.loss_exact:
        lost_text = f"{format_bytes(lost)} lost"
    else:
        lost_text = f"at least {format_bytes(lost)} lost, the true loss is unknown"
    if salvaged:
        lost_text = f"salvaged {format_bytes(salvaged)} of WAL from the old primary; {lost_text}"
    drills.finish(drill, dns_problem or "completed")
    if dns_problem:
        raise JobFailed(f"{herd.name} failed over to {new.label}, but {dns_problem}")
    return (
        f"{herd.name} failed over to {new.label} (RTO "
        f"{drill.rto_seconds:.2f} s, {lost_text}); {fenced_note}"
    )
