"""Celery tasks: thin shells that hand a job id to the runner."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from instances import jobs


@shared_task(
    name="instances.run_job",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.JOB_TIME_LIMIT,
    time_limit=settings.JOB_TIME_LIMIT + 60,
)
def run_job(self, job_id: int) -> str:
    # Operations are registered on import; the worker imports them here.
    from instances import operations  # noqa: F401

    return jobs.execute(job_id, task_id=self.request.id or "")


@shared_task(name="instances.reap_lost_jobs")
def reap_lost_jobs() -> int:
    return jobs.reap_lost_jobs()


@worker_ready.connect
def _reap_on_start(**_kwargs) -> None:
    """A restarted worker fails the jobs its dead predecessor on this host left running."""
    jobs.reap_lost_jobs(this_host_only=True)
