"""The planned switchover: no committed transaction lost, by construction."""

from __future__ import annotations

import time
from typing import NoReturn

from django.conf import settings
from django.utils import timezone

from herds import drill as drills
from herds.models import Drill
from instances import probe, steps
from instances.choices import JobKind, Role
from instances.jobs.registry import JobCancelled, JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.wal import int_to_lsn


def abort_before_promotion(
    ctx: JobContext, old: Instance, drill: Drill, exc: BaseException
) -> NoReturn:
    """Nothing was promoted: put the old primary back and say exactly what happened. Runs
    even after a cancel (its steps are not cancellable)."""
    reason = drills.reason(exc)
    try:
        ctx.ssh(
            old.server,
            steps.command_for("start", old),
            "abort: restart the old primary",
            check=False,
            cancellable=False,
        )
        # Not steps.wait_until: this wait must run even when the job was cancelled.
        deadline = time.monotonic() + settings.ACTION_WAIT
        answer, error = steps.try_probe(old)
        while answer is None and time.monotonic() < deadline:
            time.sleep(0.2)
            answer, error = steps.try_probe(old)
    except JobFailed as start_failed:
        answer, error = None, str(start_failed)
    if answer is not None and not answer.in_recovery:
        steps.record(old, answer)
        drills.finish(drill, f"aborted before promotion ({reason}); old primary restarted")
        raise JobFailed(
            f"switchover of {old.herd.name} aborted before promotion ({reason}); "
            f"the old primary {old.label} was restarted, nothing promoted"
        )
    drills.finish(drill, f"aborted before promotion ({reason}); old primary NOT restarted")
    raise JobFailed(
        f"switchover of {old.herd.name} aborted before promotion ({reason}), and the "
        f"old primary {old.label} could not be restarted ({error}): the "
        "herd has no primary; start it by hand"
    )


def rejoin_as_replica(ctx: JobContext, old: Instance, new_primary: Instance, template: str) -> None:
    """Turn a cleanly stopped old primary into a replica of the new primary: pg_rewind
    (a no-op when nothing diverged), standby.signal and primary_conninfo, start."""
    try:
        steps.checkpoint_rewind_source(ctx, new_primary, old)
    except JobFailed as exc:
        raise JobFailed(f"{exc}: rejoin it later") from None
    steps.rewind(ctx, old, new_primary, timeout=settings.ACTION_WAIT * 10)
    steps.write_standby_config(ctx, old, new_primary, template)
    steps.start(ctx, old, "start as a replica")
    steps.wait_streaming(ctx, old, new_primary)
    Instance.objects.filter(pk=old.pk).update(
        role=Role.REPLICA,
        upstream=new_primary,
        online=True,
        streams_from=new_primary.address,
        state_changed_at=timezone.now(),
        needs_rebuild=False,
    )


@operation(JobKind.SWITCHOVER)
def switchover(ctx: JobContext) -> str:
    return run_switchover(ctx, ctx.job.params)


def run_switchover(ctx: JobContext, params: dict) -> str:
    """1. live snapshot, plan (refuse clearly), check the confirmed primary is still it;
    2. stop the primary cleanly and read its final checkpoint;
    3. wait until the candidate has replayed past it (any failure or cancel up to here:
       restart the old primary, nothing promoted);
    4. promote the candidate, check it accepts writes (RTO);
    5. DNS; 6. repoint the other replicas; 7. rewind and restart the old primary as a
       replica of the new one."""
    herd, plan, instances, drill, old, _, _ = drills.begin(ctx, JobKind.SWITCHOVER, params)
    new = instances[plan.candidate.id]
    template = probe.probe(new.server.hostname, new.port).primary_conninfo
    try:
        checkpoint = steps.stop_and_read_checkpoint(ctx, old)
        drill.last_known_lsn = int_to_lsn(checkpoint)
        drill.save(update_fields=["last_known_lsn"])
        steps.wait_replayed(ctx, new, checkpoint)
    except (JobFailed, JobCancelled) as exc:
        abort_before_promotion(ctx, old, drill, exc)
    drills.promote(
        ctx, herd, new, drill, 0, None, f"the old primary {old.label} is stopped", lost_exact=True
    )
    Instance.objects.filter(pk=old.pk).update(role=Role.REPLICA, upstream=new)

    not_answering: list[str] = []

    def rest() -> str:
        problem = drills.move_dns(ctx, herd, new, drill)
        for other in instances.values():
            if other.pk in (old.pk, new.pk) or other.role != Role.REPLICA or other.fenced:
                continue
            live, _ = steps.try_probe(other)
            if live is not None:
                drills.repoint(ctx, other, new)
            else:
                ctx.note(
                    f"{other.label} not answering",
                    "not repointed: it still follows the old primary; remaster it once it is back",
                )
                not_answering.append(other.label)
                Instance.objects.filter(pk=other.pk).update(needs_remaster=True)
        rejoin_as_replica(ctx, old, new, template)
        return "; ".join(p for p in (problem, drills.move_ro_dns(ctx, herd)) if p)

    dns_problem = drills.after_promotion(ctx, herd, new, drill, rest)
    drills.finish(drill, dns_problem or "completed")
    if dns_problem:
        raise JobFailed(f"{herd.name} switched over to {new.label}, but {dns_problem}")
    forgotten = (
        f"; not answering, so not repointed (remaster once back): {', '.join(not_answering)}"
        if not_answering
        else ""
    )
    return (
        f"{herd.name} switched over to {new.label} (RTO {drill.rto_seconds:.2f} s, "
        f"0 bytes lost); {old.label} is now its replica{forgotten}"
    )
