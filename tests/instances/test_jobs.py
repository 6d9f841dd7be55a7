"""The job lifecycle through the real worker: claim, lock, steps, cancel, retry, lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from instances.jobs import queue, registry, runner
from instances.models import Job, JobKind, JobOrigin, JobState
from tests.factories import make_environment
from tests.helpers import add_lab_server, wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(lab_servers):
    return add_lab_server(lab_servers[0], make_environment("prod"))


def test_it_claims_a_job_exactly_once_under_a_race(server):
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False)
    results = []
    barrier = threading.Barrier(8)

    def contender():
        barrier.wait()
        results.append(runner.claim(job.pk, "task"))
        connection.close()

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    # Threads of one process are refused before the database (the job is in hand); a
    # worker of another process meets the conditional UPDATE, which finds it running.
    runner._let_go(job.pk)
    assert runner.claim(job.pk, "task") is False
    assert job.worker == runner.worker_id()


def test_it_runs_a_job_on_the_worker_and_records_its_steps(
    celery_worker, server, django_user_model
):
    alice = django_user_model.objects.create_user("alice")
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], user=alice)
    job = wait_for_job(job)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.requested_by == alice and job.requested_by_name == "alice"
    assert job.worker.endswith(f":{celery_worker['process'].pid}")
    assert job.summary == f"{server.hostname}: logged in as postgres with the pinned host key"
    [step] = job.steps.all()
    assert (step.host, step.command, step.exit_status, step.ok) == (
        server.hostname,
        "id -un",
        0,
        True,
    )
    assert step.output == "postgres"
    server.refresh_from_db()
    assert server.last_contact is not None


def test_it_fails_a_job_clearly_when_the_host_key_changed(celery_worker, server, lab_servers):
    server.host_key = lab_servers[1].host_key
    server.save()
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server])
    job = wait_for_job(job)
    assert job.state == JobState.FAILED
    assert server.hostname in job.error and "host key changed" in job.error
    assert "re-pin" in job.error


def test_it_ends_a_bug_as_errored_with_its_traceback_apart_from_a_refusal(server, monkeypatch):
    """The runner's real lifecycle (claim, lock, steps, end) in this process, with an
    operation that has a bug after its first real step."""

    def buggy(ctx):
        ctx.ssh(ctx.job.server, ["id", "-un"], "log in")
        return {}["missing"]

    def refusing(ctx):
        raise registry.JobFailed("srv1: refused, nothing changed")

    monkeypatch.setitem(registry.OPERATIONS, JobKind.CHECK_SERVER, buggy)
    [job] = runner.run_inline(queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False))
    assert job.state == JobState.ERRORED
    assert job.error.startswith("a bug in ElepHaaS, not a refusal: KeyError: 'missing'")
    assert "Traceback" in job.traceback and "buggy" in job.traceback
    assert [s.name for s in job.steps.all()] == ["log in"]
    # An errored job may be retried (the retry goes to the broker: a session worker may run
    # it, with the real operation).
    assert queue.retry(job, None).retry_of_id == job.pk

    monkeypatch.setitem(registry.OPERATIONS, JobKind.CHECK_SERVER, refusing)
    [again] = runner.run_inline(queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False))
    assert (again.state, again.error, again.traceback) == (
        JobState.FAILED,
        "srv1: refused, nothing changed",
        "",
    )


def test_it_ends_a_job_past_its_time_limit_and_its_remote_command_with_it(
    server, monkeypatch, settings
):
    """Celery's threads pool ignores time_limit: the runner enforces JOB_TIME_LIMIT."""
    seconds = f"{40 + time.time() % 1:.4f}"

    def slow(ctx):
        ctx.ssh(ctx.job.server, ["sleep", seconds], "sleep")
        return "finished"

    def sleeps() -> int:
        out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.strip() == f"sleep {seconds}")

    settings.JOB_TIME_LIMIT = 2
    monkeypatch.setitem(registry.OPERATIONS, JobKind.CHECK_SERVER, slow)
    started = time.monotonic()
    [job] = runner.run_inline(queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False))
    assert time.monotonic() - started < 2 + 2 + 3  # the limit, a heartbeat, the stop
    assert job.state == JobState.FAILED
    assert job.error.startswith(
        "ran past the time limit of 2 s (ELEPHAAS_JOB_TIME_LIMIT) and was stopped, its "
        "command with it: "
    )
    assert sleeps() == 0


def test_it_refuses_two_operations_for_one_kind():
    with pytest.raises(RuntimeError, match="two operations registered"):
        registry.operation(JobKind.CHECK_SERVER)(lambda ctx: "")


def _hold_server_lock(server):
    """Another job holding the server: claimed and locked by this test process."""
    [holder] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False, origin=JobOrigin.CLI)
    assert runner.claim(holder.pk, "held-by-test")
    holder = Job.objects.with_related().get(pk=holder.pk)
    return holder, runner.take_lock(holder, threading.Event())


def test_it_fails_a_conflicting_job_with_the_holder_named_then_retries(celery_worker, server):
    holder, lock = _hold_server_lock(server)
    try:
        [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server])
        job = wait_for_job(job)
    finally:
        lock.release()
    assert job.state == JobState.FAILED
    assert job.error.startswith(f"{server.hostname} is busy: job #{holder.pk}")
    assert job.steps.count() == 0
    again = wait_for_job(queue.retry(job, None))
    assert again.state == JobState.SUCCEEDED
    assert again.retry_of_id == job.pk and again.batch == job.batch


def test_it_cancels_a_queued_job_which_then_never_runs(server):
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False)
    assert "cancelled before it started" in queue.cancel(job, None)
    assert runner.execute(job.pk) == JobState.CANCELLED
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED and job.steps.count() == 0


def test_it_cancels_a_running_job(celery_worker, server, django_user_model):
    oscar = django_user_model.objects.create_user("oscar")
    holder, lock = _hold_server_lock(server)
    try:
        [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server])
        wait_for_job(job, states={JobState.RUNNING})
        assert "is running" in queue.cancel(job, oscar)
        job = wait_for_job(job)
    finally:
        lock.release()
    assert job.state == JobState.CANCELLED
    assert job.error == (
        "cancelled by oscar while running: it stopped before its next step; check the "
        "target, then retry if needed"
    )


def test_it_fails_a_job_whose_worker_was_killed_mid_job(server, lone_worker):
    from instances.tasks import run_job

    worker = lone_worker()
    holder, lock = _hold_server_lock(server)
    try:
        [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False)
        run_job.apply_async(args=[job.pk], task_id=job.task_id, queue="lone")
        job = wait_for_job(job, states={JobState.RUNNING}, timeout=60)
        assert job.worker.endswith(f":{worker.pid}")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        lock.release()
    time.sleep(1)
    job.refresh_from_db()
    assert job.state == JobState.RUNNING  # nobody has noticed yet
    lone_worker()  # the next worker on this host reaps it at start-up
    job = wait_for_job(job, timeout=60)
    assert job.state == JobState.FAILED
    assert job.error.startswith(f"the worker {job.worker} exited")
    assert "check it, then retry" in job.error


def test_it_tells_a_worker_in_another_pid_namespace_from_its_own_by_more_than_a_pid(server):
    """Two controllers in containers on one machine may share a hostname; a pid means
    something only in its PID namespace. A job of the other's must not be failed as
    'exited' because its pid is not alive here: only its heartbeat going stale says so."""
    from django.conf import settings

    script = (
        "import django; django.setup(); "
        "from instances.jobs.runner import worker_id; print(worker_id())"
    )
    other = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        env=dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    here = runner.worker_id()
    assert other.split("/")[0] == here.split("/")[0] == socket.gethostname()
    assert other.rpartition(":")[0] != runner.worker_host() == here.rpartition(":")[0]
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid nothing here runs under any more
    jobs = queue.create_jobs(JobKind.CHECK_SERVER, [server, server], queue=False)
    now = timezone.now()
    for job, host in zip(jobs, [other.rpartition(":")[0], runner.worker_host()], strict=True):
        Job.objects.filter(pk=job.pk).update(
            state=JobState.RUNNING, worker=f"{host}:{gone.pid}", started_at=now, heartbeat_at=now
        )
    theirs, ours = jobs
    assert runner.reap_lost_jobs() == 1
    theirs.refresh_from_db(), ours.refresh_from_db()
    assert ours.state == JobState.FAILED and ours.error.startswith(
        f"the worker {ours.worker} exited"
    )
    assert theirs.state == JobState.RUNNING  # its heartbeat is fresh: the other one runs it
    Job.objects.filter(pk=theirs.pk).update(
        heartbeat_at=now - timedelta(seconds=settings.JOB_LOST_AFTER + 1)
    )
    assert runner.reap_lost_jobs() == 1
    theirs.refresh_from_db()
    assert theirs.state == JobState.FAILED
    assert theirs.error.startswith(f"the worker {theirs.worker} stopped answering")


def test_urgent_commands_never_wait_for_a_server_slot(server, settings):
    """A drill's write-gap commands (urgent) run while bulk work holds every slot of the
    server; an ordinary command waits for one."""
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False)
    ctx = runner.JobContext(Job.objects.with_related().get(pk=job.pk), threading.Event())
    with runner.server_slot(server.hostname):  # make sure the semaphore exists
        pass
    slot = runner._slots[server.hostname]
    taken = 0
    while slot.acquire(blocking=False):
        taken += 1
    assert taken == settings.SSH_MAX_PER_SERVER
    try:
        started = time.monotonic()
        result = ctx.ssh(server, ["true"], "urgent while the server is full", urgent=True)
        assert result.exit_status == 0 and time.monotonic() - started < 10
        done = threading.Event()

        def ordinary():
            ctx.ssh(server, ["true"], "ordinary while the server is full")
            done.set()

        thread = threading.Thread(target=ordinary, daemon=True)
        thread.start()
        assert not done.wait(1.0), "an ordinary command ran without a free slot"
        slot.release()
        taken -= 1
        assert done.wait(15), "the ordinary command did not run once a slot was free"
    finally:
        for _ in range(taken):
            slot.release()


def test_it_beats_every_running_job_from_one_thread_and_relays_cancels(server, settings):
    """One heartbeat thread per process beats all its running jobs and relays cancel
    requests; with no job left it ends, keeping no database session."""
    jobs = queue.create_jobs(JobKind.CHECK_SERVER, [server] * 3, queue=False)
    for job in jobs:
        assert runner.claim(job.pk, "beat-test")
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(heartbeat_at=long_ago)
    Job.objects.filter(pk=jobs[1].pk).update(cancel_requested=True)
    events = [threading.Event() for _ in jobs]
    try:
        for job, event in zip(jobs, events, strict=True):
            runner.heartbeat.add(job.pk, event)
        assert events[1].wait(5 * settings.JOB_HEARTBEAT + 2), "the cancel was not relayed"
        beats = Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("heartbeat_at")
        assert all(beat > long_ago for (beat,) in beats)
        assert not events[0].is_set() and not events[2].is_set()
        assert [t.name for t in threading.enumerate()].count("heartbeat") == 1
    finally:
        for job in jobs:
            runner.heartbeat.remove(job.pk)
    deadline = time.monotonic() + 5 * settings.JOB_HEARTBEAT + 2
    while "heartbeat" in [t.name for t in threading.enumerate()]:
        assert time.monotonic() < deadline, "the idle heartbeat thread did not end"
        time.sleep(0.05)


def test_it_keeps_a_lock_session_for_the_next_job_with_no_lock_left_on_it(server, monkeypatch):
    """A job's lock session is kept for the next job (as the ORM keeps its connections),
    every advisory lock released first; with CONN_MAX_AGE 0 it is closed."""
    from django.db import connections

    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 60)
    first, second = queue.create_jobs(JobKind.CHECK_SERVER, [server, server], queue=False)
    for job in (first, second):
        assert runner.claim(job.pk, "lock-test")
    lock = runner.take_lock(Job.objects.with_related().get(pk=first.pk), threading.Event())
    backend = lock.raw.get_backend_pid()
    lock.release()
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", [backend]
        )
        assert cur.fetchone()[0] == 0
    again = runner.take_lock(Job.objects.with_related().get(pk=second.pk), threading.Event())
    try:
        assert again.raw.get_backend_pid() == backend
        with connection.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [1, server.pk])
            assert cur.fetchone()[0] is False  # the second job holds the server now
    finally:
        monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
        again.release()
    assert again.raw.closed
