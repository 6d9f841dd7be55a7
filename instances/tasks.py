"""Celery tasks: thin shells that hand a job id to the runner."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from instances import audit, health, settings_gather
from instances.jobs import campaigns, queue, runner


@shared_task(
    name="instances.run_job",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.JOB_TIME_LIMIT,
    time_limit=settings.JOB_TIME_LIMIT + 60,
)
def run_job(self, job_id: int) -> str:
    return runner.execute(job_id, task_id=self.request.id or "")


@shared_task(name="instances.reap_lost_jobs")
def reap_lost_jobs() -> int:
    return runner.reap_lost_jobs()


@shared_task(
    name="instances.poll_health",
    # A sweep that could not run before the next one is due is not worth running late.
    expires=settings.HEALTH_INTERVAL,
    soft_time_limit=max(60, 20 * settings.PG_PROBE_CONNECT_TIMEOUT),
    time_limit=max(60, 20 * settings.PG_PROBE_CONNECT_TIMEOUT) + 30,
)
def poll_health() -> dict:
    """Probe every instance and record what was seen (instances.health.sweep)."""
    return health.sweep().as_dict()


@shared_task(
    name="instances.gather_settings",
    soft_time_limit=max(60, 4 * settings.PG_PROBE_CONNECT_TIMEOUT),
    time_limit=max(60, 4 * settings.PG_PROBE_CONNECT_TIMEOUT) + 30,
)
def gather_settings() -> dict:
    """Read the non-default settings of the instances due (instances.settings_gather)."""
    return settings_gather.gather_due().as_dict()


@shared_task(name="instances.send_waiting_jobs")
def send_waiting_jobs() -> int:
    """The outbox sweep: queued jobs the broker never took, sent again."""
    return queue.send_waiting()


@shared_task(name="instances.advance_campaigns")
def advance_campaigns() -> int:
    """Every unfinished campaign decides again what may start (a worker killed between a
    job's end and its campaign's advance costs one interval)."""
    return campaigns.advance_unfinished()


@shared_task(name="instances.prune_audit_events", expires=settings.AUDIT_PRUNE_INTERVAL)
def prune_audit_events() -> int:
    """Delete audit events older than ELEPHAAS_AUDIT_RETENTION_DAYS (beat, hourly)."""
    return audit.prune()


@worker_ready.connect
def _reap_on_start(**_kwargs) -> None:
    """A restarted worker fails the jobs its dead predecessor on this host left running,
    and sends what waited for the broker while no worker could take it."""
    runner.reap_lost_jobs(this_host_only=True)
    queue.send_waiting()
    campaigns.advance_unfinished()
