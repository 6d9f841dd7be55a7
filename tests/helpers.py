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


# The roles the migrations make (herds/migrations/0004_roles.py and the grants after it).
# A transactional test's flush empties auth_group, so the migrated roles are copied when
# the test database is made (tests/conftest.py, django_db_setup) and put back by tests that
# log LDAP users in after such a flush (the browser tests).
ROLE_NAMES = ("viewer", "operator", "dba")
_roles: dict[str, list[tuple[str, str]]] = {}


def snapshot_roles() -> None:
    """Copy each role's permissions, by (app label, codename), as the migrations left them."""
    from django.contrib.auth.models import Group

    _roles.clear()
    for group in Group.objects.filter(name__in=ROLE_NAMES).prefetch_related(
        "permissions__content_type"
    ):
        _roles[group.name] = sorted(
            (p.content_type.app_label, p.codename) for p in group.permissions.all()
        )


def restore_roles() -> None:
    """Make the roles again as snapshot_roles copied them (after a flush; harmless before)."""
    from django.contrib.auth.models import Group, Permission

    if set(_roles) != set(ROLE_NAMES):
        raise RuntimeError(
            f"the roles were not copied when the test database was made (found {sorted(_roles)}):"
            " run with --create-db"
        )
    by_key = {
        (p.content_type.app_label, p.codename): p
        for p in Permission.objects.select_related("content_type")
    }
    for name, keys in _roles.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set([by_key[key] for key in keys])
