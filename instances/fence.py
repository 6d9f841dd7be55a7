"""Finishing a fence: a fenced instance (an old primary after a failover) whose server
answers again is stopped and kept from starting, in its own audited job.

The health sweep queues this job (instances.health.due_fences) when a fenced instance
answers SQL, or, while its fence is not confirmed, when its server's SSH port answers
again (at most every FENCE_RETRY seconds). Found accepting writes, it is a split brain:
the job records the window during which it was writable on the failover's drill and
raises the alarm.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from herds.models import Drill
from instances import probe, steps
from instances.choices import JobKind
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext

audit = logging.getLogger("elephaas.audit")


@operation(JobKind.FENCE)
def fence(ctx: JobContext) -> str:
    instance = ctx.job.instance
    if not instance.fenced:
        return f"{instance.label} is not fenced: nothing to do"
    writable_since: datetime | None = None
    with ctx.step("is it accepting writes?", instance.address) as step:
        try:
            in_recovery, started = probe.postmaster_start(instance.server.hostname, instance.port)
        except probe.ProbeError as exc:
            step.output = f"not answering ({exc})"
        else:
            if not in_recovery:
                writable_since = started
                step.output = f"SPLIT BRAIN: it runs as a primary, since {started.isoformat()}"
            else:
                step.output = f"it runs in recovery (read-only), since {started.isoformat()}"
    drill = None
    if writable_since is not None:
        # Recorded before the stop is tried: a stop that fails must not hide the split brain.
        drill = (
            Drill.objects.filter(
                herd=instance.herd_id, kind=JobKind.FAILOVER, old_primary=instance.label
            )
            .order_by("-started_at")
            .first()
        )
        if drill is not None:
            drill.split_brain_from = min(drill.split_brain_from or writable_since, writable_since)
            drill.split_brain_until = None  # still writable
            drill.save(update_fields=["split_brain_from", "split_brain_until"])
        audit.warning(
            "split brain: fenced %s accepts writes since %s (job #%s)",
            instance.label,
            writable_since.isoformat(),
            ctx.job.pk,
        )
    try:
        steps.fence_on_server(ctx, instance)
    except JobFailed as exc:
        still = " It is STILL ACCEPTING WRITES (split brain)." if writable_since else ""
        raise JobFailed(
            f"{instance.label}: the fence is not confirmed ({exc});{still} the health sweep "
            f"tries again within {settings.FENCE_RETRY:.0f} s of its server answering"
        ) from None
    if writable_since is None:
        return f"{instance.label}: fence confirmed (stopped, fence marker, start.conf manual)"
    until = timezone.now()
    if drill is not None:
        drill.split_brain_until = until
        drill.save(update_fields=["split_brain_until"])
    audit.warning("split brain: fenced %s stopped at %s", instance.label, until.isoformat())
    seconds = (until - writable_since).total_seconds()
    return (
        f"SPLIT BRAIN: {instance.label} was accepting writes for {seconds:.0f} s "
        f"(since {writable_since:%Y-%m-%d %H:%M:%S %Z}); now stopped and fenced. Writes it "
        "took in that window are not on the new primary: look at them before rebuilding it"
    )
