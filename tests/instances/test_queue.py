"""Handing jobs to the broker (instances.jobs.queue.publish): a batch at once, one UPDATE,
and a broker that refuses or hangs costs one timeout per batch. The broker's one entry
point, queue._send, is replaced by a stand-in that records, refuses or hangs; the lab's
outbox tests (test_outbox.py) stop and freeze the real Redis."""

from __future__ import annotations

import threading
import time

import pytest

from instances.jobs import queue
from instances.models import Job, JobKind
from tests.factories import make_server

pytestmark = pytest.mark.django_db

COUNT = 40


@pytest.fixture
def jobs():
    return queue.create_jobs(JobKind.CHECK_SERVER, [make_server()] * COUNT, queue=False)


def test_it_hands_a_batch_over_at_once_and_records_it_in_one_update(jobs, monkeypatch):
    threads, calls = set(), []
    lock = threading.Lock()

    def send(job_id: int, task_id: str) -> None:
        time.sleep(0.02)  # a broker's round trip: the sends overlap
        with lock:
            threads.add(threading.current_thread().name)
            calls.append(job_id)

    monkeypatch.setattr(queue, "_send", send)
    started = time.monotonic()
    assert queue.publish(jobs) == COUNT
    elapsed = time.monotonic() - started
    assert sorted(calls) == sorted(j.pk for j in jobs)
    assert len(threads) > 1 and elapsed < COUNT * 0.02
    assert all(job.sent for job in jobs)
    rows = Job.objects.filter(pk__in=[j.pk for j in jobs])
    assert len({row.sent_at for row in rows}) == 1  # one UPDATE for the batch
    assert {row.dispatch_note for row in rows} == {""}


def test_it_tries_no_more_of_a_batch_once_the_broker_refused(jobs, monkeypatch):
    calls = []

    def refuse(job_id: int, task_id: str) -> None:
        calls.append(job_id)
        raise ConnectionRefusedError("Connection refused")

    monkeypatch.setattr(queue, "_send", refuse)
    assert queue.publish(jobs) == 0
    assert calls == [jobs[0].pk]
    rows = Job.objects.filter(pk__in=[j.pk for j in jobs])
    assert {(row.sent_at, row.dispatch_note) for row in rows} == {(None, queue.WAITING_NOTE)}


def test_it_waits_one_timeout_for_a_hung_broker_whatever_the_batch(jobs, monkeypatch, settings):
    settings.BROKER_PUBLISH_TIMEOUT = 0.3
    release, calls = threading.Event(), []

    def hang(job_id: int, task_id: str) -> None:
        calls.append(job_id)
        release.wait(10)

    monkeypatch.setattr(queue, "_send", hang)
    started = time.monotonic()
    try:
        assert queue.publish(jobs) == 0
        assert time.monotonic() - started < 0.3 + 0.5
        assert calls == [jobs[0].pk]
    finally:
        release.set()
    assert not Job.objects.filter(pk__in=[j.pk for j in jobs], sent_at__isnull=False).exists()


def test_it_keeps_what_the_broker_took_before_it_refused(jobs, monkeypatch):
    taken = []
    lock = threading.Lock()

    def flaky(job_id: int, task_id: str) -> None:
        with lock:
            if len(taken) >= 10:
                raise ConnectionResetError("Connection reset by peer")
            taken.append(job_id)

    monkeypatch.setattr(queue, "_send", flaky)
    sent = queue.publish(jobs)
    rows = {row.pk: row for row in Job.objects.filter(pk__in=[j.pk for j in jobs])}
    assert sent == len(taken) == 10
    assert {pk for pk, row in rows.items() if row.sent_at} == set(taken)
    waiting = {pk for pk, row in rows.items() if row.dispatch_note == queue.WAITING_NOTE}
    assert waiting == set(rows) - set(taken)
