"""Shared fixtures: the lab and its servers.

Tests marked `lab` need `python -m lab up` (make test does it); without the lab they fail
with that instruction instead of passing vacuously.
"""

from __future__ import annotations

import pytest

from lab import fleet, state


@pytest.fixture(scope="session")
def lab():
    if not state.is_up():
        pytest.fail("the lab is not up: run `python -m lab up` (or `make test`)")
    return state


@pytest.fixture(scope="session")
def lab_servers(lab) -> list[state.LabServer]:
    servers = state.servers()
    if len(servers) < 2:
        pytest.fail(f"the lab has {len(servers)} server(s); tests need at least 2")
    return servers


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, plus a copy of the roles as the migrations made them, taken before
    any transactional test's flush empties auth_group (tests.helpers.restore_roles)."""
    from tests.helpers import snapshot_roles

    with django_db_blocker.unblock():
        snapshot_roles()


@pytest.fixture(scope="session")
def celery_worker(lab, django_db_setup, django_db_blocker):
    """A real Celery worker process for this test session.

    It runs the checked-out code with the test settings, against the test database that
    pytest-django just created and the test broker database, so a job a test enqueues is
    claimed and run by a separate process exactly as in production. Tests that use it must
    be `transaction=True` so their rows are committed where the worker can see them.
    """
    import os
    import subprocess
    import time

    from django.conf import settings
    from django.db import connection

    from elephaas.celery import app, ping
    from tests.helpers import die_with_parent

    log = state.LAB_DIR / "log" / "test-worker.log"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        ELEPHAAS_DB_NAME=connection.settings_dict["NAME"],
        PYTHONUNBUFFERED="1",
    )
    app.control.purge()
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            fleet.worker_argv(f"test-{os.getpid()}@%h", settings.WORKER_CONCURRENCY),
            cwd=state.REPO_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if worker.poll() is not None:
                pytest.fail(f"the test worker exited with {worker.returncode}; see {log}")
            try:
                reply = ping.delay("ready").get(timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"the test worker did not answer within 60s; see {log}")
        yield {"process": worker, "pid": reply["worker_pid"], "log": log}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture
def lone_worker(lab, django_db_setup):
    """Start workers of their own on the `lone` queue, for the tests that kill one."""
    import os
    import subprocess

    from django.db import connection

    from tests.helpers import die_with_parent

    procs = []

    def start():
        env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="tests.settings",
            ELEPHAAS_DB_NAME=connection.settings_dict["NAME"],
        )
        log = open(state.LAB_DIR / "log" / "test-lone-worker.log", "ab")
        proc = subprocess.Popen(
            fleet.worker_argv(f"lone-{len(procs)}@%h", 4, queues="lone"),
            cwd=state.REPO_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
