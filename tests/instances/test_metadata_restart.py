"""Jobs survive a restart of the metadata PostgreSQL (#18), on the lab, through the real
worker: a rebuild (a long copy) and a switchover run while the metadata database restarts.
Each ends succeeded, or failed/errored with a reason; none is left running, none runs
twice; the locks are taken again before the next step (or the job stops there)."""

from __future__ import annotations

import time

import pytest
from django.db import InterfaceError, OperationalError, connection

from herds.models import Herd
from instances import probe
from instances.jobs import queue, runner
from instances.models import Instance, Job, JobKind, JobState
from lab import fleet
from lab import herd as lab_herd
from tests.herds.drill_lab import instances

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

NAME, PORT = "mdr", 5526


def db(func):
    """The test's own ORM calls, through the restart."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return func()
        except (OperationalError, InterfaceError):
            connection.close()
            assert time.monotonic() < deadline, "the metadata database did not come back"
            time.sleep(0.3)


def wait_state(job: Job, states, timeout: float) -> Job:
    deadline, pk = time.monotonic() + timeout, job.pk
    while True:
        job = db(lambda: Job.objects.get(pk=pk))
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job #{job.pk} still {job.state} after {timeout}s"
        time.sleep(0.1)


def restart_metadata_database() -> float:
    started = time.monotonic()
    fleet.meta_ns().run(["pg_ctlcluster", fleet.pg_version(), "meta", "restart", "-m", "fast"])
    return time.monotonic() - started


@pytest.fixture
def herds(lab, lab_servers, request):
    lab_herd.drop(NAME)
    lab_herd.create(NAME, primary=1, replicas=[2], port=PORT)
    fleet.psql(
        fleet.server_ns(1),
        PORT,
        "CREATE TABLE filler AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 40000)",
    )
    drill = request.getfixturevalue("drill")  # discovers srv1–3, finding mdr too
    mdr = Herd.objects.get(name=NAME)
    yield drill, mdr
    lab_herd.drop(NAME)


def test_a_rebuild_and_a_switchover_survive_a_metadata_database_restart(celery_worker, herds):
    drill, mdr = herds
    replica = Instance.objects.get(herd=mdr, server__hostname="127.0.1.2")
    [rebuild] = queue.create_jobs(
        JobKind.REBUILD, [replica], params={"method": "pg_basebackup", "max_rate_kb": 4096}
    )
    # Wait until the copy runs (about 10 s at 4 MB/s), then start the switchover.
    deadline = time.monotonic() + 60
    while not rebuild.steps.filter(name__icontains="pg_basebackup").exists():
        assert time.monotonic() < deadline, "the rebuild's copy did not start"
        time.sleep(0.1)
    before = instances(drill)
    [switchover] = queue.create_jobs(
        JobKind.SWITCHOVER, [drill], params={"expected_primary_id": before["127.0.1.1"].pk}
    )
    wait_state(switchover, {JobState.RUNNING, *JobState.terminal()}, 30)
    took = restart_metadata_database()
    assert took < 30

    ended = [wait_state(job, JobState.terminal(), 240) for job in (rebuild, switchover)]
    for job in ended:
        assert job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.ERRORED)
        if job.state != JobState.SUCCEEDED:
            assert job.error, f"job #{job.pk} ended {job.state} without a reason"
        # Run once: its steps numbered 1..n with no gap or repeat, and the steps that
        # must happen once happened at most once.
        seqs = list(job.steps.order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, len(seqs) + 1))
        names = steps_of(job)
        for once in (
            "promote",
            "stop the primary (fast: shutdown checkpoint, WAL sent to replicas)",
        ):
            assert names.count(once) <= 1, (job.pk, once)
        assert names.count("copy progress (pg_basebackup)") <= 1, names
    rebuild, switchover = ended
    # The copy ran through the restart over SSH: the rebuild went on, having taken its
    # locks again before its next step, and says so in a step of its own.
    assert rebuild.state == JobState.SUCCEEDED, rebuild.error
    assert "lock taken again" in steps_of(rebuild)
    assert steps_of(rebuild).count("copy progress (pg_basebackup)") == 1
    # Whatever the switchover did, the herd has exactly one primary and nothing is left
    # running.
    assert not db(lambda: Job.objects.filter(state=JobState.RUNNING).exists())
    primaries = [
        h for h in ("127.0.1.1", "127.0.1.2", "127.0.1.3") if not probe.probe(h, 5520).in_recovery
    ]
    assert len(primaries) == 1, primaries
    if switchover.state == JobState.SUCCEEDED:
        assert steps_of(switchover).count("promote") == 1


def steps_of(job: Job) -> list[str]:
    return list(job.steps.order_by("seq").values_list("name", flat=True))


def test_a_job_whose_lock_was_taken_meanwhile_stops_before_its_next_step(lab, settings):
    """The session holding a job's lock dies (as in a restart) and another session takes
    the lock before the job notices: the job's next step is refused, nothing runs."""
    import threading

    import psycopg2

    from tests.factories import make_herd

    settings.METADATA_RETRY = 1.0
    herd = make_herd()
    [job] = queue.create_jobs(JobKind.REFRESH_DNS, [herd], queue=False)
    job = Job.objects.with_related().get(pk=job.pk)
    lock = runner.take_lock(job, threading.Event())
    ctx = runner.JobContext(job, threading.Event(), lock)
    ctx.note("before", "the lock is held")
    with lock.raw.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    params = connection.get_connection_params()
    other = psycopg2.connect(**params)
    other.autocommit = True
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])
            time.sleep(0.2)
            [(mode, klass, key)] = lock.keys
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [klass, key])
            assert cur.fetchone()[0], "the other session could not take the freed lock"
        with pytest.raises(runner.JobFailed) as info:
            ctx.note("after", "must not run")
        assert "stopped before “after”" in str(info.value)
        assert "could not be taken again" in str(info.value)
        assert steps_of(job) == ["before"]
    finally:
        other.close()
        lock.release()


def test_a_job_whose_lock_session_died_takes_it_again(lab, settings):
    import threading

    import psycopg2

    from tests.factories import make_herd

    herd = make_herd()
    [job] = queue.create_jobs(JobKind.REFRESH_DNS, [herd], queue=False)
    job = Job.objects.with_related().get(pk=job.pk)
    lock = runner.take_lock(job, threading.Event())
    ctx = runner.JobContext(job, threading.Event(), lock)
    with lock.raw.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    other = psycopg2.connect(**connection.get_connection_params())
    other.autocommit = True
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.2)
        ctx.note("after", "runs")
        assert steps_of(job) == ["lock taken again", "after"]
        with other.cursor() as cur:  # held again: another session cannot take it
            [(mode, klass, key)] = lock.keys
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [klass, key])
            assert cur.fetchone()[0] is False
    finally:
        other.close()
        lock.release()


def test_a_job_delivered_while_the_metadata_database_is_down_runs_once_it_is_back(
    celery_worker, lab_servers, settings
):
    """The worker gets a job while the metadata database does not answer (here stopped;
    on a loaded controller, a connection that timed out): it claims it once the database
    is back, instead of dropping the delivery and leaving the job queued until the
    outbox's resend (OUTBOX_RESEND, 2 minutes)."""
    from instances.tasks import run_job
    from tests.factories import make_environment
    from tests.helpers import add_lab_server

    server = add_lab_server(lab_servers[0], make_environment("prod"))
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False)
    meta = fleet.meta_ns()
    meta.run(["pg_ctlcluster", fleet.pg_version(), "meta", "stop", "-m", "fast"])
    try:
        sent = time.monotonic()
        run_job.apply_async(args=[job.pk], task_id=job.task_id)
        time.sleep(3)  # the worker has it, and cannot claim it
    finally:
        meta.run(["pg_ctlcluster", fleet.pg_version(), "meta", "start"])
    job = wait_state(job, JobState.terminal(), timeout=60)
    assert job.state == JobState.SUCCEEDED, job.error
    assert time.monotonic() - sent < settings.OUTBOX_RESEND / 4
    assert job.started_at is not None and job.steps.count() == 1  # run once
