"""Jobs survive a broker outage: the jobs table is the queue of record, Redis the bell.

On the lab, through the web admin and the real worker: Redis stopped, or hung with
SIGSTOP, while a DBA queues a batch; the page answers at once and says the jobs wait;
once Redis is back the outbox sweep sends them and each runs exactly once.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from instances.jobs import queue
from instances.models import Job, JobKind, JobState
from lab import fleet
from tests.helpers import wait_for_job
from tests.herds.drill_lab import instances

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

URL = "/admin/instances/instance/"


def redis_pid() -> int:
    return int((fleet.REDIS_DIR / "redis.pid").read_text().split()[0])


def stop_redis() -> None:
    pid = redis_pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, "Redis did not stop"
        time.sleep(0.05)


def reload_replicas(admin_client, drill) -> tuple[float, str, list[Job]]:
    replicas = [i for h, i in instances(drill).items() if h != "127.0.1.1"]
    started = time.monotonic()
    response = admin_client.post(
        URL,
        {
            "action": "reload_instances",
            "confirm": "yes",
            "_selected_action": [i.pk for i in replicas],
        },
        follow=True,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    return elapsed, text, list(Job.objects.filter(kind=JobKind.RELOAD).order_by("pk"))


def ran_once(job: Job) -> None:
    """Succeeded, and its steps were recorded by one run only."""
    job = wait_for_job(job, timeout=90)
    assert job.state == JobState.SUCCEEDED, job.error
    names = [s.name for s in job.steps.order_by("seq")]
    assert names.count("reload") == 1, names


@pytest.fixture
def settings_now(settings):
    settings.OUTBOX_AFTER = 0.0
    return settings


def test_a_batch_queued_while_redis_is_down_waits_then_runs_exactly_once(
    celery_worker, lab, drill, admin_client, settings_now
):
    beat_log = fleet.LOG_DIR / "celery-beat.log"
    beat = fleet.beat_pidfile().read_text().split()[0]
    stop_redis()
    try:
        elapsed, said, jobs = reload_replicas(admin_client, drill)
        assert elapsed < 2, elapsed
        assert "2 job(s) queued" in said
        assert "The broker did not answer within 1 s: 2 of these job(s) wait" in said
        for job in jobs:
            job.refresh_from_db()
            assert job.state == JobState.QUEUED and job.sent_at is None
            assert job.dispatch_note == queue.WAITING_NOTE
        # The dashboard says so, from the jobs table alone.
        page = admin_client.get("/admin/").content.decode()
        assert 'id="fleet-jobs_waiting"' in page and "broker unreachable since" in page
        assert queue.send_waiting() == 0  # still down: nothing sent, nothing lost
    finally:
        fleet.ensure_redis()
    # One sweep after Redis is back: each job sent, run, once.
    assert queue.send_waiting() == 2
    for job in jobs:
        ran_once(job)
        job.refresh_from_db()
        assert job.sent_at is not None and job.dispatch_note == ""
    # A duplicate delivery (the sweep racing a late send) is harmless: the claim refuses it.
    queue.publish(jobs)
    time.sleep(2)
    for job in jobs:
        ran_once(job)
    assert queue.send_waiting() == 0
    # The lab's own beat lived through the outage: it sends its schedule again, unrestarted.
    seen = beat_log.stat().st_size
    deadline = time.monotonic() + 30
    while "Sending due task send-waiting-jobs" not in beat_log.read_text()[seen:]:
        assert time.monotonic() < deadline, "beat sent nothing after Redis came back"
        time.sleep(0.5)
    assert fleet.beat_pidfile().read_text().split()[0] == beat


def test_a_batch_queued_while_redis_hangs_answers_at_once_and_runs_exactly_once(
    celery_worker, lab, drill, admin_client, settings_now
):
    pid = redis_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        elapsed, said, jobs = reload_replicas(admin_client, drill)
        assert elapsed < 2, elapsed
        assert "The broker did not answer within 1 s" in said
        time.sleep(8)  # hung a while longer, as a frozen Redis host would be
    finally:
        os.kill(pid, signal.SIGCONT)
    # The send that hung finishes now, and the sweep sends again: each runs once.
    queue.send_waiting()
    for job in jobs:
        ran_once(job)


def test_the_outbox_leaves_jobs_run_in_this_process_to_it(lab_servers, settings):
    """A management command runs its jobs itself (run_inline): while it works through
    them, beat's outbox sweep, which sends queued jobs nobody handed over, must not give
    the waiting ones to a worker; each runs here, once."""
    import threading

    from django.db import connection

    from instances.jobs import runner
    from tests.factories import make_environment
    from tests.helpers import add_lab_server

    settings.OUTBOX_AFTER = 0  # the sweep sends what was not handed over, at once
    server = add_lab_server(lab_servers[0], make_environment("prod"))
    jobs = queue.create_jobs(JobKind.CHECK_SERVER, [server] * 3, queue=False)
    ids = [j.pk for j in jobs]
    done = []

    def command():
        try:
            done.extend(runner.run_inline(jobs))
        finally:
            connection.close()

    thread = threading.Thread(target=command)
    thread.start()
    # (Between create_jobs and run_inline a command does nothing: OUTBOX_AFTER covers it.)
    deadline = time.monotonic() + 30
    started = Job.objects.filter(pk__in=ids).exclude(sent_at=None, state=JobState.QUEUED)
    while not started.exists():
        assert time.monotonic() < deadline, "run_inline did not begin"
        time.sleep(0.005)
    sent = 0
    while thread.is_alive():
        sent += queue.send_waiting()
        time.sleep(0.02)
    thread.join()
    assert sent == 0
    assert [j.state for j in done] == [JobState.SUCCEEDED] * 3, [j.error for j in done]
    assert {j.worker for j in done} == {runner.worker_id()}  # this process ran each
