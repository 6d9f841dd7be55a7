"""Creating, enqueuing, cancelling and retrying jobs: what the admin and the management
commands call. No I/O beyond the metadata database and the broker (which is told about a
job only after its row has been committed).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable

from celery import current_app
from django.db import transaction
from django.utils import timezone

from instances.jobs.registry import JobFailed
from instances.models import Instance, Job, JobOrigin, JobState, Server

audit = logging.getLogger("elephaas.audit")

# The task the worker runs for every job (instances.tasks.run_job), named rather than
# imported: the tasks module sits above the runner.
RUN_JOB_TASK = "instances.run_job"


def _target_fields(target) -> dict:
    if isinstance(target, Instance):
        return {"instance": target, "target_label": str(target)}
    if isinstance(target, Server):
        return {"server": target, "target_label": target.hostname}
    herd_model = Job._meta.get_field("herd").related_model
    if isinstance(target, herd_model):
        return {"herd": target, "target_label": str(target)}
    raise TypeError(f"a job cannot target {type(target).__name__}")


def create_jobs(
    kind: str,
    targets: Iterable,
    *,
    user=None,
    params: dict | None = None,
    params_for: Callable[[object], dict] | None = None,
    origin: str = JobOrigin.ADMIN,
    queue: bool = True,
) -> list[Job]:
    """One queued job per target, sharing a batch id; enqueued when the transaction commits
    (`queue=False`: the caller runs them itself with run_inline). `params_for(target)` adds
    per-target options (e.g. the primary the DBA saw on the confirmation page)."""
    batch = uuid.uuid4()
    name = user.get_username() if user is not None else f"({JobOrigin(origin).label})"
    jobs = []
    with transaction.atomic():
        for target in targets:
            job = Job.objects.create(
                kind=kind,
                batch=batch,
                requested_by=user,
                requested_by_name=name,
                origin=origin,
                params={**(params or {}), **(params_for(target) if params_for else {})},
                task_id=str(uuid.uuid4()),
                **_target_fields(target),
            )
            jobs.append(job)
            audit.info("queued job #%s %s on %s for %s", job.pk, kind, job.target_label, name)
            if queue:
                enqueue(job)
    return jobs


def enqueue(job: Job) -> None:
    job_id, task_id = job.pk, job.task_id
    transaction.on_commit(
        lambda: current_app.send_task(RUN_JOB_TASK, args=[job_id], task_id=task_id)
    )


def cancel(job: Job, user) -> str:
    """Cancel a queued job outright; ask a running one to stop at its next check."""
    name = user.get_username() if user else "system"
    done = Job.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
        state=JobState.CANCELLED,
        finished_at=timezone.now(),
        cancel_requested=True,
        cancel_requested_by=name,
        error=f"cancelled by {name} before it started",
    )
    if done:
        audit.info("job #%s cancelled by %s before it started", job.pk, name)
        return f"Job #{job.pk} cancelled before it started."
    done = Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
        cancel_requested=True, cancel_requested_by=name
    )
    if done:
        audit.info("cancel of running job #%s requested by %s", job.pk, name)
        return f"Job #{job.pk} is running: it stops at its next step (its command is interrupted)."
    return f"Job #{job.pk} has already ended ({Job.objects.get(pk=job.pk).state})."


def retry(job: Job, user) -> Job:
    if job.state not in JobState.retryable():
        raise JobFailed(
            f"job #{job.pk} is {job.state}: only failed, errored or cancelled jobs are retried"
        )
    target = job.target
    if target is None:
        raise JobFailed(f"job #{job.pk}'s target no longer exists")
    with transaction.atomic():
        [new] = create_jobs(job.kind, [target], user=user, params=job.params, origin=job.origin)
        Job.objects.filter(pk=new.pk).update(retry_of=job, batch=job.batch)
    new.refresh_from_db()
    return new
