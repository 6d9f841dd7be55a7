"""Helpers shared by lab tests: inventory rows for lab servers, waiting for jobs."""

from __future__ import annotations

import time

from instances.models import Job, JobState, Server


def add_lab_server(lab_server, environment) -> Server:
    """A Server row for a lab server, its host key pinned from what the lab generated."""
    return Server.objects.create(
        hostname=lab_server.hostname,
        environment=environment,
        ssh_port=lab_server.ssh_port,
        ssh_user=lab_server.ssh_user,
        host_key_type=lab_server.host_key_type,
        host_key=lab_server.host_key,
        host_key_fingerprint=lab_server.host_key_fingerprint,
    )


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
