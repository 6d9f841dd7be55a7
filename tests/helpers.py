"""Helpers shared by lab tests: inventory rows for lab servers, waiting for jobs."""

from __future__ import annotations

import time

from instances.models import Job, JobState, Server


def add_lab_server(lab_server, environment) -> Server:
    """A Server row for a lab server, its host key pinned from what the lab generated."""
    return Server.objects.create(environment=environment, **lab_server.inventory_fields())


def wait_for_job(job: Job, states=None, timeout: float = 30) -> Job:
    states = states or JobState.terminal()
    deadline = time.monotonic() + timeout
    while True:
        job = Job.objects.get(pk=job.pk)
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job #{job.pk} still {job.state} after {timeout}s: {job.error or job.summary}"
            )
        time.sleep(0.1)
