"""Helpers shared by lab tests: inventory rows for lab servers, waiting for jobs."""

from __future__ import annotations

import ctypes
import signal
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


def die_with_parent() -> None:
    """preexec_fn for workers a test session starts: the kernel ends them when the session
    ends, even when pytest itself is killed and its fixtures' finalizers never run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
