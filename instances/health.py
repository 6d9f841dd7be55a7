"""Health polling: probe every instance at once and record what was observed.

A sweep (the `instances.poll_health` task, every HEALTH_INTERVAL seconds):

1. take the sweep lock (a session advisory lock): if another sweep still runs, skip;
2. read the inventory: every instance, its server address, recorded role, online state,
   upstream;
3. probe them all concurrently (HEALTH_CONCURRENCY threads); each probe is bounded by
   PG_PROBE_CONNECT_TIMEOUT to connect and again for its query, so an unreachable server
   costs its timeout, not the whole sweep;
4. decide per instance what to write (`observe`, pure): role and LSNs from what it
   answered, a replica's lag against its upstream's LSN when that upstream answered in the
   same sweep; for an instance that did not answer, only online=False and why: its LSNs
   and lag stay as they were, never invented;
5. write with one bulk UPDATE per group of instances that change the same fields, what
   answered within HEALTH_FIRST_WRITE seconds at once, the rest when it answers or its
   probe gives up;
6. keep a sample per instance (online, lag) in one INSERT, and delete the samples older
   than HEALTH_SAMPLE_RETENTION hours in one DELETE (the dashboard's lag pictures); both
   per write of step 5.

The decisions (what changed, how far behind, is it lagging, is its upstream gone) are
plain functions of plain values in instances.health_rules.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Q
from django.utils import timezone

from instances import probe
from instances.choices import JobKind, JobOrigin, JobState
from instances.health_rules import Outcome, Unreachable, observe
from instances.jobs import queue
from instances.models import HealthSample, Instance, Job

log = logging.getLogger("elephaas.health")

# (class, key) of the advisory lock one sweep holds; classes 1-3 are jobs' (jobs.LOCK_CLASS).
SWEEP_LOCK = (4, 1)
BULK_BATCH = 500


# --- the sweep (I/O) ------------------------------------------------------------------------


@dataclass
class SweepSummary:
    instances: int = 0
    online: int = 0
    offline: int = 0
    changed: int = 0
    seconds: float = 0.0
    # Seconds until what answered was written (the rest waits for its probe's timeout).
    first_write: float | None = None
    skipped: bool = False
    fence_jobs: int = 0
    samples: int = 0
    samples_pruned: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _probe_one(hostname: str, port: int, timeout: float) -> Outcome:
    try:
        return probe.probe(hostname, port, statement_timeout=timeout, keep=True)
    except probe.ProbeError as exc:
        return Unreachable(str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd instance must not sink the sweep
        log.exception("health probe of %s:%s", hostname, port)
        return Unreachable(f"{hostname}:{port}: probe failed: {type(exc).__name__}: {exc}")


_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None


def _executor(workers: int) -> ThreadPoolExecutor:
    """One probe thread pool per process, kept between sweeps (starting threads anew each
    sweep cost more than the probes themselves on a small fleet)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            _pool = (
                os.getpid(),
                settings.HEALTH_CONCURRENCY,
                ThreadPoolExecutor(
                    max_workers=settings.HEALTH_CONCURRENCY, thread_name_prefix="health-probe"
                ),
            )
        return _pool[2]


def probe_all(
    targets: Iterable[tuple[int, str, int]], first_wait: float | None = None
) -> Iterator[dict[int, Outcome]]:
    """Probe (key, hostname, port) targets concurrently; yields {key: result or
    Unreachable} twice: what answered (or failed) within `first_wait` seconds, then the
    rest once they answer or time out. Every target is in exactly one of the two.

    libpq's connect_timeout bounds connecting and statement_timeout the query; the overall
    wait below is a safety net for a server that accepts a connection and then freezes.
    """
    targets = list(targets)
    if not targets:
        return
    timeout = float(settings.PG_PROBE_CONNECT_TIMEOUT)
    workers = min(settings.HEALTH_CONCURRENCY, len(targets))
    # Each wave of `workers` probes takes at most a connect and a query timeout.
    deadline = math.ceil(len(targets) / workers) * (2 * timeout) + 1
    started = time.monotonic()
    pool = _executor(workers)
    futures = {
        pool.submit(_probe_one, hostname, port, timeout): (key, hostname, port)
        for key, hostname, port in targets
    }
    done, pending = wait(futures, timeout=first_wait)
    yield {futures[f][0]: f.result() for f in done}
    if not pending:
        return
    # Never wait past the deadline for a hung probe: its thread is freed when its socket
    # times out, and its result is reported as no answer.
    wait(pending, timeout=max(0.0, deadline - (time.monotonic() - started)))
    rest: dict[int, Outcome] = {}
    for future in pending:
        future.cancel()
        key, hostname, port = futures[future]
        if future.done() and not future.cancelled():
            rest[key] = future.result()
        else:
            rest[key] = Unreachable(f"{hostname}:{port}: no answer within {deadline:.0f} s")
    yield rest


def _try_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", SWEEP_LOCK)
        return bool(cursor.fetchone()[0])


def _unlock() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", SWEEP_LOCK)


def sweep() -> SweepSummary:
    """Probe every instance and record what was observed (see the module docstring)."""
    started = time.monotonic()
    if not _try_lock():
        log.info("health sweep skipped: another sweep is still running")
        return SweepSummary(skipped=True)
    try:
        summary = _sweep()
    finally:
        _unlock()
    summary.seconds = round(time.monotonic() - started, 3)
    log.info(
        "health sweep: %d instances, %d online, %d offline, %d changed, %.2f s",
        summary.instances,
        summary.online,
        summary.offline,
        summary.changed,
        summary.seconds,
    )
    return summary


def _sweep() -> SweepSummary:
    instances = list(
        Instance.objects.select_related("server").only(
            "pk",
            "port",
            "online",
            "role",
            "upstream_id",
            "state_changed_at",
            "fenced",
            "fence_confirmed_at",
            "server__hostname",
            "server__ssh_port",
        )
    )
    by_pk = {i.pk: i for i in instances}
    summary = SweepSummary(instances=len(instances))
    started = time.monotonic()
    outcomes: dict[int, Outcome] = {}
    # What answered within HEALTH_FIRST_WRITE is written at once; an address that holds a
    # connection open without answering (a hung server, a data centre cut off) delays
    # only its own row, written when its probe gives up.
    for batch in probe_all(
        ((i.pk, i.server.hostname, i.port) for i in instances), settings.HEALTH_FIRST_WRITE
    ):
        outcomes.update(batch)
        _record([by_pk[pk] for pk in batch], outcomes, summary)
        if summary.first_write is None:
            summary.first_write = round(time.monotonic() - started, 3)
    fenced = [i for i in instances if i.fenced]
    if fenced:
        due = due_fences(
            [i for i in fenced if not isinstance(outcomes[i.pk], Unreachable)],
            [
                i
                for i in fenced
                if isinstance(outcomes[i.pk], Unreachable) and i.fence_confirmed_at is None
            ],
        )
        if due:
            queue.create_jobs(JobKind.FENCE, due, origin=JobOrigin.SCHEDULE)
            summary.fence_jobs = len(due)
            log.warning("health sweep: fence jobs queued for %s", ", ".join(str(i.pk) for i in due))
    return summary


def _record(instances: list[Instance], outcomes: dict[int, Outcome], summary: SweepSummary) -> None:
    """Write what the sweep observed of `instances`. A replica's lag is measured against
    its upstream's answer in this sweep, if it is in already (written first or together)."""
    now = timezone.now()
    groups: dict[tuple[str, ...], list[Instance]] = {}
    samples: list[HealthSample] = []
    for instance in instances:
        upstream = outcomes.get(instance.upstream_id) if instance.upstream_id else None
        fields = observe(instance, outcomes[instance.pk], upstream, now)
        # From what this sweep measured, not from the row: an instance that did not
        # answer keeps its old lag on the row, but its sample has none.
        samples.append(
            HealthSample(
                instance_id=instance.pk,
                taken_at=now,
                online=fields["online"],
                lag_bytes=fields.get("lag_bytes"),
                lag_seconds=fields.get("lag_seconds"),
            )
        )
        if fields["online"]:
            summary.online += 1
        else:
            summary.offline += 1
        if fields["state_changed_at"] == now:
            summary.changed += 1
        for name, value in fields.items():
            setattr(instance, name, value)
        # Instances that answered and those that did not write different fields: an
        # unreachable one's LSNs are not written at all, so a job that records fresher
        # values meanwhile keeps them.
        groups.setdefault(tuple(sorted(fields)), []).append(instance)
    for names, rows in groups.items():
        _bulk_set(rows, names)
    kept, pruned = keep_samples(samples, now)
    summary.samples += kept
    summary.samples_pruned += pruned


def keep_samples(samples: list[HealthSample], now) -> tuple[int, int]:
    """Insert this sweep's samples, delete the expired ones: (kept, deleted).

    One statement each whatever the fleet's size: Django sends a bulk_create without a
    batch size as one INSERT on PostgreSQL, and a delete without cascades or signals as one
    DELETE, which the taken_at index keeps to the rows that just expired.
    """
    HealthSample.objects.bulk_create(samples)
    expired = now - timedelta(hours=settings.HEALTH_SAMPLE_RETENTION)
    deleted, _ = HealthSample.objects.filter(taken_at__lt=expired).delete()
    return len(samples), deleted


def _ssh_answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def due_fences(answered: Iterable[Instance], unconfirmed_silent: Iterable[Instance]) -> list:
    """Which fenced instances the sweep queues a fence job for: those that answered SQL
    (they run: at once), and those whose fence is not confirmed and whose server's SSH port
    answers again; never one with a fence job queued or running, nor (for the second kind)
    within FENCE_RETRY seconds of the last one."""
    answered, silent = list(answered), list(unconfirmed_silent)
    candidates = answered + silent
    if not candidates:
        return []
    since = timezone.now() - timedelta(seconds=settings.FENCE_RETRY)
    history = {
        row["instance_id"]: row
        for row in Job.objects.filter(
            kind=JobKind.FENCE, instance_id__in=[i.pk for i in candidates]
        )
        .values("instance_id")
        .annotate(last=Max("created_at"), active=Count("pk", filter=Q(state__in=JobState.active())))
    }

    def quiet(instance: Instance, *, throttled: bool) -> bool:
        row = history.get(instance.pk)
        if row is None:
            return True
        if row["active"]:
            return False
        return not throttled or row["last"] < since

    due = [i for i in answered if quiet(i, throttled=False)]
    retry = [i for i in silent if quiet(i, throttled=True)]
    if retry:
        with ThreadPoolExecutor(max_workers=min(16, len(retry))) as pool:
            answers = list(
                pool.map(_ssh_answers, [(i.server.hostname, i.server.ssh_port) for i in retry])
            )
        due += [i for i, ok in zip(retry, answers, strict=True) if ok]
    return due


def _bulk_set(rows: list[Instance], names: tuple[str, ...]) -> None:
    """UPDATE … FROM (VALUES …): one statement per group of rows. Django's bulk_update
    builds a CASE per field and row, which cost more than all the probes of a sweep."""
    from django.db import connection
    from psycopg2.extras import execute_values

    fields = [Instance._meta.get_field(name) for name in names]
    columns = [field.column for field in fields]
    casts = [field.db_type(connection) for field in fields]
    assignments = ", ".join(f'"{column}" = v."{column}"' for column in columns)
    value_names = ", ".join(f'"{column}"' for column in columns)
    template = "(%s, " + ", ".join(f"%s::{cast}" for cast in casts) + ")"
    table = Instance._meta.db_table
    sql = (
        f'UPDATE "{table}" AS i SET {assignments} FROM (VALUES %s) AS v(id, {value_names}) '
        f"WHERE i.id = v.id"
    )
    values = [
        [
            row.pk,
            *(field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields),
        ]
        for row in rows
    ]
    with connection.cursor() as cursor:
        for start in range(0, len(values), BULK_BATCH):
            execute_values(
                cursor.cursor, sql, values[start : start + BULK_BATCH], template=template
            )
