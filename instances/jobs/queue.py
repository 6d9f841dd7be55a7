"""Creating, enqueuing, cancelling and retrying jobs: what the admin and the management
commands call. No I/O beyond the metadata database and the broker (which is told about a
job only after its row has been committed).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from instances import audit
from instances.choices import AuditVerb, JobKind
from instances.jobs.registry import JobFailed
from instances.models import Instance, Job, JobOrigin, JobState, Server

log = logging.getLogger("elephaas.jobs")

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
    campaign=None,
    wave: int | None = None,
    remote: str = "",
    retry_of: Job | None = None,
) -> list[Job]:
    """One queued job per target, sharing a batch id; handed to the broker when the
    transaction commits (`queue=False`: the caller runs them itself with run_inline).
    `params_for(target)` adds per-target options (e.g. the primary the DBA saw on the
    confirmation page). After the commit each job's `sent` says whether the broker took
    it; one it did not take stays queued, with a note, for the outbox sweep. A campaign's
    jobs (`campaign`, `wave`) are created held and not sent: the campaign releases them
    (instances.jobs.campaigns).

    Each job is an audit event (a drill's is "drill queued") from `remote`: the request's
    address, or where no request asked, "worker" for the schedule and "cli" for a
    management command. A retry (`retry_of`) joins the batch of the job it retries."""
    batch = retry_of.batch if retry_of is not None else uuid.uuid4()
    name = user.get_username() if user is not None else f"({JobOrigin(origin).label})"
    remote = remote or _default_remote(origin)
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
                campaign=campaign,
                wave=wave,
                held=campaign is not None,
                retry_of=retry_of,
                **_target_fields(target),
            )
            jobs.append(job)
            _record_queued(job, name, remote)
        if queue and jobs and campaign is None:
            transaction.on_commit(lambda: publish(jobs))
    return jobs


def _default_remote(origin: str) -> str:
    return {JobOrigin.CLI: audit.CLI, JobOrigin.SCHEDULE: audit.WORKER}.get(origin, "-")


def _record_queued(job: Job, name: str, remote: str) -> None:
    if job.retry_of_id is not None:
        message = f"retried job #{job.retry_of_id} as #{job.pk} {job.kind} on {job.target_label}"
    else:
        message = f"queued job #{job.pk} {job.kind} on {job.target_label}"
    if job.campaign_id is not None:
        message += f" in campaign #{job.campaign_id}"
    if job.kind in JobKind.drills():
        # A switchover or failover is a drill: its own verb, whether new or retried.
        verb = AuditVerb.DRILL_QUEUED
    else:
        verb = AuditVerb.JOB_RETRIED if job.retry_of_id is not None else AuditVerb.JOB_QUEUED
    audit.record(verb, f"{message} for {name}", username=name, remote=remote, obj=job)


def enqueue(job: Job) -> None:
    transaction.on_commit(lambda: publish([job]))


# Publishing runs in these threads so that a request never waits on the broker longer
# than BROKER_PUBLISH_TIMEOUT, even when Redis hangs (SIGSTOP, a dead network) rather
# than refuses; a thread stuck on a hung broker finishes its send when the broker comes
# back (the claim makes that duplicate harmless).
_publisher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="elephaas-publish")

WAITING_NOTE = "waiting for the broker: it will be sent when the broker answers"


def _send(job_id: int, task_id: str) -> None:
    # One quick retry: it reconnects a pooled connection the broker's restart broke.
    current_app.send_task(
        RUN_JOB_TASK,
        args=[job_id],
        task_id=task_id,
        retry=True,
        retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
    )


def publish(jobs: list[Job]) -> int:
    """Hand queued jobs to the broker: the first alone, then the others all at once
    through the publishing threads. A refusal, or no answer within BROKER_PUBLISH_TIMEOUT
    (of the first, or of the previous answer), stops the batch: the broker is down, one
    timeout per batch, not per job. Records sent_at (one UPDATE) or the waiting note;
    sets `job.sent`. Returns how many the broker took.

    (One job after the other, each with an UPDATE of its own, a bulk action of 100 took
    2.4-2.7 s to hand over on a loaded lab, and its last job waited that long to start:
    bench_scale_restart.)
    """
    for job in jobs:
        job.sent = False
    down = _hand_over(jobs[:1])
    if not down:
        down = _hand_over(jobs[1:])
    sent = [job.pk for job in jobs if job.sent]
    if sent:
        Job.objects.filter(pk__in=sent).update(sent_at=timezone.now(), dispatch_note="")
    waiting = [job.pk for job in jobs if not job.sent]
    if waiting:
        Job.objects.filter(pk__in=waiting, state=JobState.QUEUED).update(dispatch_note=WAITING_NOTE)
    if down:
        log.warning(
            "broker did not take %d job(s) (%s): they wait in the jobs table for the outbox sweep",
            len(waiting),
            down,
        )
    return len(sent)


def _hand_over(batch: list[Job]) -> str:
    """Send the batch's jobs through the publishing threads, marking each sent; returns
    why the broker stopped taking them ('' when it took them all)."""
    futures = {_publisher.submit(_send, job.pk, job.task_id): job for job in batch}
    pending, down = set(futures), ""
    while pending and not down:
        done, pending = wait(
            pending, timeout=settings.BROKER_PUBLISH_TIMEOUT, return_when=FIRST_COMPLETED
        )
        if not done:
            down = f"no answer within {settings.BROKER_PUBLISH_TIMEOUT:g} s"
        for future in done:
            error = future.exception()
            if error is None:
                futures[future].sent = True
            elif not down:  # kombu and redis raise many kinds
                down = f"{type(error).__name__}: {error}"[:120]
    for future in pending:
        future.cancel()  # not tried; one already sending finishes when the broker answers
    return down


def send_waiting() -> int:
    """The outbox sweep (beat, and each worker when it starts): send again the jobs that
    are queued, not cancelled, and either never reached the broker (older than
    OUTBOX_AFTER seconds) or were sent more than OUTBOX_RESEND seconds ago and are still
    unclaimed (a broker that lost its messages). Returns how many the broker took."""
    now = timezone.now()
    waiting = list(
        Job.objects.filter(state=JobState.QUEUED, cancel_requested=False, held=False)
        .filter(
            Q(sent_at__isnull=True, created_at__lt=now - timedelta(seconds=settings.OUTBOX_AFTER))
            | Q(sent_at__lt=now - timedelta(seconds=settings.OUTBOX_RESEND))
        )
        .order_by("pk")
        .only("pk", "task_id")[: settings.OUTBOX_BATCH]
    )
    if not waiting:
        return 0
    sent = publish(waiting)
    log.info("outbox sweep: %d of %d waiting job(s) sent", sent, len(waiting))
    return sent


def cancel(job: Job, user, *, remote: str = "-") -> str:
    """Cancel a queued job outright; ask a running one to stop at its next check. Either
    is an audit event from `remote`."""
    name = user.get_username() if user else "system"
    done = Job.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
        state=JobState.CANCELLED,
        finished_at=timezone.now(),
        cancel_requested=True,
        cancel_requested_by=name,
        error=f"cancelled by {name} before it started",
    )
    if done:
        audit.record(
            AuditVerb.JOB_CANCELLED,
            f"job #{job.pk} cancelled by {name} before it started",
            username=name,
            remote=remote,
            obj=job,
        )
        return f"Job #{job.pk} cancelled before it started."
    done = Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
        cancel_requested=True, cancel_requested_by=name
    )
    if done:
        audit.record(
            AuditVerb.JOB_CANCELLED,
            f"cancel of running job #{job.pk} requested by {name}",
            username=name,
            remote=remote,
            obj=job,
        )
        return f"Job #{job.pk} is running: it stops at its next step (its command is interrupted)."
    return f"Job #{job.pk} has already ended ({Job.objects.get(pk=job.pk).state})."


def retryable_target(job: Job):
    """The target a retry of `job` would run on; JobFailed saying why it cannot be retried."""
    if job.state not in JobState.retryable():
        raise JobFailed(
            f"job #{job.pk} is {job.state}: only failed, errored or cancelled jobs are retried"
        )
    target = job.target
    if target is None:
        raise JobFailed(f"job #{job.pk}'s target no longer exists")
    return target


def retry(job: Job, user, *, remote: str = "-") -> Job:
    """A new job doing the same to the same target, in the same batch; an audit event."""
    target = retryable_target(job)
    [new] = create_jobs(
        job.kind,
        [target],
        user=user,
        params=job.params,
        origin=job.origin,
        remote=remote,
        retry_of=job,
    )
    return new
