"""Two controllers on two hosts sharing one metadata database and one broker (DESIGN,
"Deployment"): worker A on the lab's host, worker B on a host of its own (network, mount,
UTS and PID namespaces: lab/controller.py), both real Celery workers running the real
runner against the lab's servers.

Each worker listens on a queue of its own and on a shared one, so a test can hand a job to
either, or to whichever takes it first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from elephaas.celery import app, ping
from herds.models import Herd
from instances.jobs import queue
from instances.jobs.runner import LOCK_CLASS
from instances.models import Instance, Job, JobKind, JobState, JobStep, Role
from instances.tasks import reap_lost_jobs, run_job
from lab import controller, fleet, proc, state
from lab import herd as lab_herd
from tests.factories import make_environment
from tests.helpers import add_lab_server, die_with_parent, wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

NAME = "twoctl"
PORT = 5493
A, B, BOTH = "two-a", "two-b", "two-both"


def _worker_env(test_db: str) -> dict[str, str]:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        ELEPHAAS_DB_NAME=test_db,
        PYTHONUNBUFFERED="1",
    )


def _answer(queue_name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ping.apply_async(args=[queue_name], queue=queue_name).get(timeout=3)
        except Exception:
            if time.monotonic() > deadline:
                raise


@pytest.fixture(scope="module")
def workers(lab, django_db_setup):
    """Worker A on this host, worker B in its namespaces; both stopped afterwards."""
    from django.db import connection

    env = _worker_env(connection.settings_dict["NAME"])
    log = state.LAB_DIR / "log"
    name = f"controller-2-{os.getpid()}"
    index = 1 + os.getpid() % 200  # two test runs at once get two pairs; 201+: the lab's
    app.control.purge()
    with open(log / "test-two-a.log", "ab") as out:
        worker_a = subprocess.Popen(
            fleet.worker_argv(f"two-a-{os.getpid()}@%h", 4, queues=f"{A},{BOTH}"),
            cwd=state.REPO_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    host_b = controller.start_host(name, index, tied=True)
    try:
        controller.start_worker(
            host_b,
            fleet.worker_argv(f"two-b@{name}", 4, queues=f"{B},{BOTH}"),
            env,
            log / "test-two-b.log",
            tied=True,
        )
        a, b = _answer(A), _answer(B)
        yield {
            "a": {"process": worker_a, "id": a["worker_id"], **a},
            "b": {"host": host_b, "id": b["worker_id"], **b},
        }
    finally:
        worker_a.terminate()
        try:
            worker_a.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_a.kill()
        controller.stop_host(name, index)


@pytest.fixture(scope="module")
def twoctl(lab_servers):
    lab_herd.drop(NAME)
    info = lab_herd.create(NAME, primary=1, replicas=[], port=PORT)
    yield info
    postmaster = _postmaster(info["version"])
    if postmaster:
        os.kill(postmaster, signal.SIGCONT)
    lab_herd.drop(NAME)


@pytest.fixture
def servers(lab_servers):
    environment = make_environment("prod")
    return [add_lab_server(s, environment) for s in lab_servers[:4]]


@pytest.fixture
def instance(twoctl, servers):
    herd = Herd.objects.create(
        name=NAME,
        cluster_name=NAME,
        environment=servers[0].environment,
        port=PORT,
        pg_version=int(twoctl["version"]),
    )
    return Instance.objects.create(herd=herd, server=servers[0], role=Role.PRIMARY)


def _send(job: Job, queue_name: str) -> None:
    run_job.apply_async(args=[job.pk], task_id=job.task_id, queue=queue_name)


def _postmaster(version: str) -> int | None:
    pidfile = fleet.server_ns(1).folder / "lib" / version / NAME / "postmaster.pid"
    return proc.read_pid(pidfile)


def test_it_runs_worker_b_on_a_host_of_its_own(workers):
    a, b = workers["a"], workers["b"]
    host_b = b["host"]
    assert a["hostname"] == socket.gethostname()
    assert b["hostname"] == host_b.name != a["hostname"]
    # B's pid is its own namespace's, not the host's; its network stack is not ours.
    assert b["worker_pid"] != host_b.worker_pid()
    assert host_b.net_ns() != os.readlink("/proc/self/ns/net")
    # ...and what it reaches of the lab (database, broker) goes over its veth pair.
    routes = subprocess.run(
        ["nsenter", f"--target={host_b.holder}", "--net", "--", "ip", "route", "get", "127.0.0.1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"dev elctl{host_b.index}n" in routes


def test_it_spreads_jobs_over_both_workers_and_runs_each_exactly_once(workers, servers):
    jobs = queue.create_jobs(JobKind.CHECK_SERVER, servers * 3, queue=False)
    # Every job is delivered twice (as the outbox sends again a job the broker seemed to
    # lose): the claim lets exactly one delivery run it, on whichever worker.
    for job in jobs + jobs:
        _send(job, BOTH)
    ended = [wait_for_job(job, timeout=60) for job in jobs]
    assert [j.state for j in ended] == [JobState.SUCCEEDED] * len(jobs), [j.error for j in ended]
    ran_on = {j.worker for j in ended}
    assert ran_on == {workers["a"]["id"], workers["b"]["id"]}
    # Run once: one claim, one set of steps (a second run would add its own).
    assert [j.steps.count() for j in ended] == [1] * len(jobs)
    for job in ended:
        assert job.summary.endswith("logged in as postgres with the pinned host key")


def test_it_keeps_two_conflicting_jobs_on_one_target_apart_across_the_two(workers, instance):
    # The test holds the instance's lock while both workers claim their job, so that
    # both wait for it at once; released, exactly one gets it at a time.
    conn = psycopg2.connect(**_dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS["instance"], instance.pk])
    try:
        on_a, on_b = queue.create_jobs(JobKind.RELOAD, [instance, instance], queue=False)
        _send(on_a, A)
        _send(on_b, B)
        wait_for_job(on_a, states={JobState.RUNNING})
        wait_for_job(on_b, states={JobState.RUNNING})
    finally:
        conn.close()
    on_a, on_b = wait_for_job(on_a), wait_for_job(on_b)
    assert (on_a.state, on_b.state) == (JobState.SUCCEEDED, JobState.SUCCEEDED), (
        on_a.error,
        on_b.error,
    )
    assert on_a.worker == workers["a"]["id"]
    assert on_a.worker.endswith(f":{workers['a']['process'].pid}")
    assert on_b.worker == workers["b"]["id"]
    first, second = sorted((on_a, on_b), key=lambda j: j.steps.first().started_at)
    # Both were claimed (running) before either began its work...
    assert max(on_a.started_at, on_b.started_at) < first.finished_at
    # ...and the second's first step came after the first had ended.
    assert second.steps.first().started_at >= first.finished_at


def test_it_recovers_a_job_whose_worker_was_killed_mid_command(workers, instance, twoctl):
    """B is killed (SIGKILL) while its restart command runs; A's reaper fails the job as
    the runner's rules say (another host: once its heartbeat is JOB_LOST_AFTER old), ends
    what it left on the server, and the target's lock is free again."""
    from django.conf import settings

    postmaster = _postmaster(twoctl["version"])
    os.kill(postmaster, signal.SIGSTOP)  # the restart's stop now waits
    [job] = queue.create_jobs(JobKind.RESTART, [instance], params={"mode": "fast"}, queue=False)
    _send(job, B)
    deadline = time.monotonic() + 60
    while not JobStep.objects.filter(job=job, name="restart (fast)").exists():
        assert time.monotonic() < deadline, "B never started the restart command"
        time.sleep(0.1)
    time.sleep(0.5)  # the command runs on the server
    host_b = workers["b"]["host"]
    os.kill(host_b.worker_pid(), signal.SIGKILL)
    killed_at = time.monotonic()
    job.refresh_from_db()
    assert (job.state, job.worker) == (JobState.RUNNING, workers["b"]["id"])

    # A, as beat would have it do every 30 s, looks for lost jobs until it finds this one.
    reaped = 0
    while not reaped:
        assert time.monotonic() - killed_at < settings.JOB_LOST_AFTER + 30, "never reaped"
        reaped = reap_lost_jobs.apply_async(queue=A).get(timeout=30)
        if not reaped:
            time.sleep(1)
    job.refresh_from_db()
    # A lives on another host: it cannot see B's pid, only the heartbeat stopping.
    assert time.monotonic() - killed_at >= settings.JOB_LOST_AFTER - 1
    assert job.state == JobState.FAILED
    assert job.error == (
        f"the worker {workers['b']['id']} stopped answering during step 1 (restart (fast)); "
        "the target may be half-changed: check it, then retry"
    )
    [cleanup] = job.steps.filter(name="after it was lost: end what it left running")
    assert cleanup.host == instance.server.hostname and cleanup.ok
    left = subprocess.run(["pgrep", "-f", f"elephaas-job-{job.pk}"], capture_output=True)
    assert left.returncode == 1, left.stdout  # nothing of the job runs any more

    # The instance's lock went with B's database session: A restarts it at once.
    os.kill(postmaster, signal.SIGCONT)
    [again] = queue.create_jobs(JobKind.RESTART, [instance], params={"mode": "fast"}, queue=False)
    _send(again, A)
    again = wait_for_job(again, timeout=90)
    assert again.state == JobState.SUCCEEDED, again.error
    assert again.worker == workers["a"]["id"]
    assert Path(f"/proc/{postmaster}").exists() is False  # a new postmaster runs


def _dsn() -> dict:
    from django.db import connection

    s = connection.settings_dict
    return {
        "host": s["HOST"],
        "port": s["PORT"],
        "dbname": s["NAME"],
        "user": s["USER"],
        "password": s["PASSWORD"],
    }
