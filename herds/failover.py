"""The DR failover: the primary is down or unreachable; promote the best replica."""

from __future__ import annotations

from django.utils import timezone

from herds import drill as drills
from instances import commands, steps
from instances.choices import JobKind, Role
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.wal import format_bytes, int_to_lsn


def fence(ctx: JobContext, old: Instance) -> str:
    """Make sure the old primary cannot take writes again: stop it where its server answers
    (and keep Debian from starting it at boot); otherwise only the inventory can fence it."""
    Instance.objects.filter(pk=old.pk).update(
        fenced=True, needs_rebuild=True, online=False, state_changed_at=timezone.now()
    )
    try:
        ctx.ssh(
            old.server,
            steps.command_for("stop", old, mode="immediate"),
            f"fence {old.label}: stop it",
            check=False,
        )
    except JobFailed as exc:
        # Its server does not answer: the step records why; the failover goes on.
        return (
            f"{old.label} could not be reached to stop it ({exc}): it is "
            "marked fenced in the inventory; make sure it stays down"
        )
    start_conf = steps.start_conf(old)
    if start_conf:
        ctx.ssh(
            old.server,
            commands.start_conf_manual(start_conf),
            "keep it from starting at boot (start.conf: manual)",
            check=False,
        )
    return f"{old.label} stopped and fenced; rebuild it to rejoin"


@operation(JobKind.FAILOVER)
def failover(ctx: JobContext) -> str:
    """1. live snapshot and plan: the most up-to-date replica, refused past the loss
    threshold unless accepted; 2. fence the old primary (stop it if its server answers,
    keep it from starting at boot; else mark it fenced); 3. promote, check writes (RTO);
    4. DNS; 5. repoint the other replicas; 6. mark the old primary as needing a rebuild."""
    herd, plan, instances, drill, old = drills.begin(ctx, JobKind.FAILOVER)
    new = instances[plan.candidate.id]
    fenced_note = fence(ctx, old) if old is not None else ""
    lost = plan.data_loss_bytes
    drills.promote(
        ctx,
        herd,
        new,
        drill,
        lost,
        int_to_lsn(plan.candidate.best_lsn),
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
                    ctx.note(f"{other.label} not answering", "remaster it later")
        return problem

    dns_problem = drills.after_promotion(ctx, herd, new, drill, rest)
    if lost is None:
        lost_text = "loss unknown (no last known primary position)"
    elif plan.loss_exact:
        lost_text = f"{format_bytes(lost)} lost"
    else:
        lost_text = f"at least {format_bytes(lost)} lost, the true loss is unknown"
    drills.finish(drill, dns_problem or "completed")
    if dns_problem:
        raise JobFailed(f"{herd.name} failed over to {new.label}, but {dns_problem}")
    return (
        f"{herd.name} failed over to {new.label} (RTO "
        f"{drill.rto_seconds:.2f} s, {lost_text}); {fenced_note}"
    )
