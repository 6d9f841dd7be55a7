"""The job runner: claim, lock, run, record, end.

The Celery task calls `execute(job_id)`. The operation registered for the job's kind
(instances.jobs.registry) receives a `JobContext` and does its work through it (SSH
commands, probes, notes), so every step is written to the job as it happens.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    connections,
)
from django.db.models import F
from django.utils import timezone

from instances import audit as audit_trail
from instances import commands, ssh
from instances.choices import AuditVerb, JobKind
from instances.commands import quote_argv
from instances.jobs import campaigns
from instances.jobs.registry import JobCancelled, JobFailed, registered
from instances.models import Instance, Job, JobState, JobStep, Server

log = logging.getLogger("elephaas.jobs")
audit = logging.getLogger("elephaas.audit")

OUTPUT_TAIL_CHARS = 4000
LOCK_CLASS = {"server": 1, "herd": 2, "instance": 3}

_slots_lock = threading.Lock()
_slots: dict[str, threading.BoundedSemaphore] = {}


@contextmanager
def server_slot(hostname: str) -> Iterator[None]:
    """Bound how many commands this process runs on one server at once."""
    with _slots_lock:
        slot = _slots.get(hostname)
        if slot is None:
            slot = _slots[hostname] = threading.BoundedSemaphore(settings.SSH_MAX_PER_SERVER)
    with slot:
        yield


def worker_host() -> str:
    """This worker's host as the reaper must tell it apart: its hostname, then its boot
    (two machines, or one machine rebooted, never share it) and its PID namespace (two
    controllers in containers on one machine share the boot and may share the hostname,
    but a pid means something only inside its own namespace)."""
    return f"{socket.gethostname()}/{_boot_id()[:8]}.{_pid_namespace()}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return "noboot"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "nons"


def worker_id() -> str:
    """`host/boot.pidns:pid`: the reaper fails a job at once only when its worker's host
    is this one and its pid is gone (reap_lost_jobs)."""
    return f"{worker_host()}:{os.getpid()}"


DB_LOST = (OperationalError, InterfaceError)


def db_retry(func, what: str):
    """Run an ORM call of the job's bookkeeping; when the metadata database connection is
    broken (a restart), drop it and try again on a new one for up to METADATA_RETRY
    seconds, then raise."""
    deadline = time.monotonic() + settings.METADATA_RETRY
    while True:
        try:
            return func()
        except DB_LOST as exc:
            connection.close()
            if time.monotonic() > deadline:
                raise
            log.warning("metadata database lost while %s (%s): retrying", what, exc)
            time.sleep(0.5)


# --- lost jobs ------------------------------------------------------------------------------


def reap_lost_jobs(*, this_host_only: bool = False) -> int:
    """Fail running jobs whose worker is gone, so none stays 'running' forever.

    A worker on this host (the same boot and PID namespace: worker_host) whose pid is no
    longer alive is certainly gone; any other job whose heartbeat is older than
    JOB_LOST_AFTER is presumed gone (the heartbeat thread beats every JOB_HEARTBEAT seconds
    while the job runs)."""
    now = timezone.now()
    host = worker_host()
    reaped = 0
    running = Job.objects.filter(state=JobState.RUNNING).only(
        "pk", "worker", "heartbeat_at", "kind", "target_label", "requested_by_name"
    )
    for job in running:
        ran_on, _, pid = job.worker.rpartition(":")
        dead = ran_on == host and pid.isdigit() and not _pid_alive(int(pid))
        stale = job.heartbeat_at and now - job.heartbeat_at > timedelta(
            seconds=settings.JOB_LOST_AFTER
        )
        if not dead and (this_host_only or not stale):
            continue
        last = job.steps.order_by("-seq").first()
        where = f" during step {last.seq} ({last.name})" if last else ""
        reason = "exited" if dead else "stopped answering"
        half_copied = Instance.objects.filter(rebuild_job=job.pk).select_related("herd", "server")
        leaves = (
            "; ".join(
                f"the data directory of {i.label} is incomplete and marked so: retry the rebuild"
                for i in half_copied
            )
            or "the target may be half-changed: check it, then retry"
        )
        error = f"the worker {job.worker} {reason}{where}; {leaves}"
        if Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
            state=JobState.FAILED, finished_at=now, error=error
        ):
            reaped += 1
            log.warning("job #%s: %s", job.pk, error)
            record_end(job, JobState.FAILED, error)
            end_leftovers(job.pk)
            advance_campaign_of(job.pk)
    return reaped


def record_end(job: Job, state: str, outcome: str) -> None:
    """A job's end on the `elephaas.audit` log; a drill's (switchover, failover) is an
    audit event too, "from" the worker, naming who asked for it."""
    line = (
        f"job #{job.pk} {job.kind} {state} on {job.target_label} for "
        f"{job.requested_by_name}: {outcome}"
    )
    if job.kind not in JobKind.drills():
        audit.info("%s", line)
        return
    audit_trail.record(
        AuditVerb.DRILL_ENDED,
        line,
        username=job.requested_by_name,
        remote=audit_trail.WORKER,
        obj=job,
    )


def advance_campaign_of(job_id: int) -> None:
    """A campaign's job ended: its campaign decides what starts next. Never fails the
    job's own end (beat advances every unfinished campaign anyway)."""
    campaign_id = Job.objects.filter(pk=job_id).values_list("campaign_id", flat=True).first()
    if campaign_id is None:
        return
    try:
        campaigns.advance(campaign_id)
    except Exception:  # noqa: BLE001 - the beat sweep tries again
        log.exception("campaign #%s: advance after job #%s failed", campaign_id, job_id)


def end_leftovers(job_id: int) -> list[str]:
    """What a lost job left running ends: on every server its steps ran a command on,
    the processes under its owner marker (commands.end_owned). Each server's answer is a
    step of the job, so its log says what was found and ended."""
    hosts = set(
        JobStep.objects.filter(job_id=job_id).exclude(command="").values_list("host", flat=True)
    )
    lines = []
    seq = JobStep.objects.filter(job_id=job_id).count()
    for server in Server.objects.filter(hostname__in=hosts).order_by("hostname"):
        argv = commands.end_owned(f"job-{job_id}")
        started = time.monotonic()
        try:
            result = ssh.run(server, argv, timeout=60, check=False, owner="reaper")
            output, ok = result.stdout.strip(), result.exit_status == 0
        except ssh.SSHError as exc:
            output, ok = f"could not look: {exc}", False
        seq += 1
        JobStep.objects.create(
            job_id=job_id,
            seq=seq,
            name="after it was lost: end what it left running",
            host=server.hostname,
            command=quote_argv(argv),
            ok=ok,
            duration=time.monotonic() - started,
            output=_tail(output),
        )
        lines.append(f"{server.hostname}: {output.splitlines()[0] if output else 'done'}")
        log.warning("job #%s lost: %s: %s", job_id, server.hostname, output)
    return lines


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- running ------------------------------------------------------------------------------


@dataclass
class Lock:
    # A DB-API connection of the job's own while it runs: if the worker dies, its locks
    # go with the session; at the job's end they are released and the session is kept.
    raw: object
    keys: list[tuple[str, int, int]]

    def release(self) -> None:
        _give_back(self.raw)

    def alive(self) -> bool:
        try:
            with self.raw.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return True
        except Exception:  # noqa: BLE001 - any failure means the session (and locks) are gone
            return False

    def retake(self) -> bool:
        """The session holding the locks died (a metadata database restart frees them):
        take them again at once on a new connection, or say it could not."""
        self.release()
        try:
            self.raw = _lock_connection()
            with self.raw.cursor() as cur:
                for mode, klass, key in self.keys:
                    func = (
                        "pg_try_advisory_lock_shared"
                        if mode == "shared"
                        else "pg_try_advisory_lock"
                    )
                    cur.execute(f"SELECT {func}(%s, %s)", [klass, key])
                    if not cur.fetchone()[0]:
                        return False
            return True
        except Exception:  # noqa: BLE001 - the database is still away: not retaken
            return False


# Sessions that held a job's locks and released them all, kept for the next job of this
# process as the ORM keeps its connections (CONN_MAX_AGE): opening one (a backend fork and
# a SCRAM exchange, 14-46 ms) for every job of a bulk action of 100 was a cost of its own
# on the metadata database and in the worker (bench_scale_restart).
_idle_lock = threading.Lock()
_idle: list[tuple[int, float, object]] = []  # (pid, given back at, connection)


def _lock_connection():
    """A session of the job's own for its advisory locks: an idle one this process gave
    back (checked alive first), else a new one. It holds no lock when handed out."""
    max_age = connections["default"].settings_dict.get("CONN_MAX_AGE") or 0
    while True:
        with _idle_lock:
            taken = _idle.pop() if _idle else None
        if taken is None:
            break
        pid, since, raw = taken
        if pid == os.getpid() and time.monotonic() - since < max_age:
            try:
                with raw.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
                return raw
            except Exception:  # noqa: BLE001 - a dead session (a restart): open another
                pass
        if pid == os.getpid():
            _close(raw)
    db = connections["default"]
    raw = db.get_new_connection(db.get_connection_params())
    raw.autocommit = True
    return raw


def _give_back(raw) -> None:
    """Release every advisory lock the session holds and keep it for the next job; a
    session that cannot say it released them is closed (Postgres frees them then)."""
    max_age = connections["default"].settings_dict.get("CONN_MAX_AGE") or 0
    try:
        if not max_age:
            raise RuntimeError("connections are not kept (CONN_MAX_AGE 0)")
        with raw.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock_all()")
    except Exception:  # noqa: BLE001 - closing is the release that always works
        _close(raw)
        return
    now = time.monotonic()
    with _idle_lock:
        _idle.append((os.getpid(), now, raw))
        stale = [item for item in _idle if item[0] == os.getpid() and now - item[1] >= max_age]
        _idle[:] = [item for item in _idle if item not in stale]
    for _pid, _since, old in stale:
        _close(old)


def _close(raw) -> None:
    try:
        raw.close()
    except Exception:  # noqa: BLE001 - closing is best effort; Postgres frees it anyway
        pass


def lock_keys(job: Job) -> list[tuple[str, int, int]]:
    """(mode, class, id) advisory locks: herd-level work locks the herd; instance work
    locks the instance and shares the herd lock, so a switchover and a restart in one herd
    never run at once but restarts of different instances do."""
    if job.instance_id:
        return [
            ("shared", LOCK_CLASS["herd"], job.instance.herd_id),
            ("exclusive", LOCK_CLASS["instance"], job.instance_id),
        ]
    if job.herd_id:
        return [("exclusive", LOCK_CLASS["herd"], job.herd_id)]
    return [("exclusive", LOCK_CLASS["server"], job.server_id)]


def take_lock(job: Job, cancel: threading.Event) -> Lock:
    """Wait up to JOB_LOCK_WAIT seconds for the target's locks, then fail clearly.

    Session-level advisory locks on a connection of the job's own: Postgres releases them
    when the connection closes, including when the worker process dies mid-job.
    """
    raw = _lock_connection()
    deadline = time.monotonic() + settings.JOB_LOCK_WAIT
    held: list[tuple[str, int, int]] = []
    try:
        with raw.cursor() as cur:
            for mode, klass, key in lock_keys(job):
                func = "pg_try_advisory_lock_shared" if mode == "shared" else "pg_try_advisory_lock"
                while True:
                    cur.execute(f"SELECT {func}(%s, %s)", [klass, key])
                    if cur.fetchone()[0]:
                        held.append((mode, klass, key))
                        break
                    if cancel.is_set():
                        raise JobCancelled()
                    if time.monotonic() > deadline:
                        raise JobFailed(_busy_message(job))
                    time.sleep(0.2)
    except BaseException:
        _give_back(raw)
        raise
    return Lock(raw, held)


def _busy_message(job: Job) -> str:
    others = Job.objects.active().exclude(pk=job.pk).filter(state=JobState.RUNNING)
    if job.instance_id:
        others = others.filter(instance_id=job.instance_id) | others.filter(
            herd_id=job.instance.herd_id
        )
    elif job.herd_id:
        others = others.filter(herd_id=job.herd_id) | others.filter(instance__herd_id=job.herd_id)
    else:
        others = others.filter(server_id=job.server_id)
    other = others.order_by("started_at").first()
    holder = (
        f"job #{other.pk} ({other.get_kind_display()}, by {other.requested_by_name}) "
        f"is running on it"
        if other
        else "another job holds it"
    )
    return (
        f"{job.target_label} is busy: {holder}; waited {settings.JOB_LOCK_WAIT:.0f}s. "
        f"Retry when it has ended."
    )


@dataclass
class Beating:
    """A running job as the heartbeat sees it."""

    job_id: int
    cancel: threading.Event
    deadline: float  # time.monotonic() past which JOB_TIME_LIMIT has run out
    timed_out: bool = False


class Heartbeat:
    """One thread per worker process beats the heartbeat of every job the process runs,
    turns cancel requests into their cancel events, and ends a job that runs past
    JOB_TIME_LIMIT the same way (Celery's threads pool does not enforce time limits): its
    running command is stopped with its channel.

    Every JOB_HEARTBEAT seconds: one UPDATE for all of them and one SELECT of the cancel
    requests, on one database session. (A thread per job did the same per job: with 16
    jobs running a third of the worker's metadata sessions and of its statements were
    heartbeats, bench_scale_restart.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, Beating] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._idle = threading.Event()

    def add(self, job_id: int, cancel: threading.Event) -> Beating:
        beating = Beating(job_id, cancel, time.monotonic() + settings.JOB_TIME_LIMIT)
        with self._lock:
            self._jobs[job_id] = beating
            # A forked child has the dict but not the thread.
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._idle = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._idle,), name="heartbeat", daemon=True
                )
                self._thread.start()
        return beating

    def remove(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            if not self._jobs:
                self._idle.set()

    def _run(self, idle: threading.Event) -> None:
        # The thread lives while jobs run: an idle one keeps no database session (a test
        # database could not be dropped under it).
        try:
            while True:
                idle.wait(min(settings.JOB_HEARTBEAT, settings.JOB_TIME_LIMIT))
                with self._lock:
                    jobs = list(self._jobs.values())
                    if not jobs:
                        self._thread = None
                        return
                    idle.clear()
                self.beat(jobs)
        finally:
            connection.close()

    def beat(self, jobs: list[Beating]) -> None:
        now = time.monotonic()
        for beating in jobs:
            if now > beating.deadline and not beating.cancel.is_set():
                beating.timed_out = True
                beating.cancel.set()
        ids = [b.job_id for b in jobs]
        try:
            Job.objects.filter(pk__in=ids).update(heartbeat_at=timezone.now())
            cancelled = set(
                Job.objects.filter(pk__in=ids, cancel_requested=True).values_list("pk", flat=True)
            )
        except DB_LOST:
            # The metadata database restarted: beat again once it is back (the reaper
            # only fails a job whose beat stopped for JOB_LOST_AFTER).
            connection.close()
            return
        except Exception:  # noqa: BLE001 - a lost heartbeat is visible; never stop beating
            log.exception("heartbeat of jobs %s", ids)
            connection.close()
            return
        for beating in jobs:
            if beating.job_id in cancelled:
                beating.cancel.set()


heartbeat = Heartbeat()


@dataclass(frozen=True)
class Done:
    """A step done outside JobContext.step (JobContext.record)."""

    name: str
    host: str
    ok: bool
    output: str
    duration: float


class JobContext:
    """What an operation uses to do its work and record every step."""

    def __init__(self, job: Job, cancel: threading.Event, lock: Lock | None = None) -> None:
        self.job = job
        self.cancel = cancel
        self.lock = lock
        self._seq = job.steps.count()
        # What the job leaves behind if it ends now, and what to do about it: operations
        # set it where stopping would leave something half-done; a cancel, a time limit
        # or the reaper says it in the job's one-line error.
        self.leaves = ""

    @property
    def owner(self) -> str:
        """How its commands are named on servers (commands.owned): `job-12`."""
        return f"job-{self.job.pk}"

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled()

    @contextmanager
    def step(
        self, name: str, host: str = "", command: str = "", *, cancellable: bool = True
    ) -> Iterator[JobStep]:
        if cancellable:
            self.check_cancel()
            self.check_lock(name)
        self._seq += 1
        step = db_retry(
            lambda: JobStep.objects.create(
                job=self.job, seq=self._seq, name=name[:255], host=host[:255], command=command
            ),
            "recording a step",
        )
        started = time.monotonic()
        try:
            yield step
        except BaseException as exc:
            step.ok = False
            if not step.output:
                step.output = _tail(str(exc))
            raise
        else:
            if step.ok is None:
                step.ok = True
        finally:
            step.duration = time.monotonic() - started

            # (No heartbeat here: the process's heartbeat thread beats every job.)
            db_retry(
                lambda: step.save(update_fields=["ok", "output", "duration", "exit_status"]),
                "recording a step",
            )

    def check_lock(self, before: str) -> None:
        """Before each step: the session holding the target's locks is still there, or the
        locks are taken again; otherwise the job stops here, before the step."""
        if self.lock is None or self.lock.alive():
            return
        deadline = time.monotonic() + settings.METADATA_RETRY
        while not self.lock.retake():
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"stopped before “{before[:80]}”: the metadata database connection that "
                    "held this job's lock on its target broke and the lock could not be "
                    "taken again (another job may hold it now)"
                    + (f"; {self.leaves}" if self.leaves else "")
                )
            time.sleep(0.5)
        self._seq += 1
        db_retry(
            lambda: JobStep.objects.create(
                job=self.job,
                seq=self._seq,
                name="lock taken again",
                output="the metadata database connection holding the target's lock broke "
                "(a restart?); the lock was taken again before the next step",
                ok=True,
                duration=0,
            ),
            "recording a step",
        )

    def record(self, *done: Done) -> None:
        """Steps that were done elsewhere (in other threads, at the same time), written
        at once, each with its outcome and how long it took: one INSERT for them all."""
        self.check_cancel()
        self.check_lock(done[0].name if done else "")
        now = timezone.now()
        rows = []
        for item in done:
            self._seq += 1
            rows.append(
                JobStep(
                    job=self.job,
                    seq=self._seq,
                    name=item.name[:255],
                    host=item.host[:255],
                    ok=item.ok,
                    output=_tail(item.output),
                    started_at=now - timedelta(seconds=item.duration),
                    duration=item.duration,
                )
            )
        db_retry(lambda: JobStep.objects.bulk_create(rows), "recording steps")

    def note(self, name: str, detail: str = "", host: str = "") -> None:
        """A step that records a decision or a finding rather than a command."""
        with self.step(name, host) as step:
            step.output = detail

    def ssh(
        self,
        server,
        argv: Sequence[str],
        name: str,
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
        cancellable: bool = True,
        urgent: bool = False,
    ) -> ssh.Result:
        """Run a command as a recorded step. `cancellable=False` is for the steps that put
        things back after a failure or a cancel: they must run even then. `urgent` is for
        the few commands of a drill's write gap (stopping the primary, reading its final
        checkpoint, promoting): they never queue for a server slot behind bulk work or
        behind the other herds of a site drill whose DR copies share a server."""
        with self.step(name, server.hostname, quote_argv(argv), cancellable=cancellable) as step:
            try:
                with nullcontext() if urgent else server_slot(server.hostname):
                    if cancellable:
                        self.check_cancel()
                    result = ssh.run(
                        server,
                        list(argv),
                        check=check,
                        input=input,
                        timeout=timeout,
                        cancel=self.cancel if cancellable else None,
                        owner=self.owner,
                    )
            except ssh.SSHError as exc:
                step.exit_status = exc.exit_status
                step.output = _tail(exc.stderr_tail or str(exc))
                if exc.stage == "cancelled":
                    raise JobCancelled() from exc
                raise JobFailed(str(exc)) from exc
            step.exit_status = result.exit_status
            step.ok = result.exit_status == 0 or not check
            step.output = _tail("\n".join(p for p in (result.stdout, result.stderr) if p))
            return result

    def local(self, argv: Sequence[str], name: str, *, timeout: float) -> tuple[int | None, str]:
        """Run a command on the controller itself (a fencing hook) as a recorded step:
        (exit status or None when it could not run or timed out, its output). It never
        raises for the command's own failure; the caller decides what it means."""
        with self.step(name, "controller", quote_argv(argv)) as step:
            try:
                done = subprocess.run(
                    list(argv),
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                step.ok, step.output = False, f"no answer within {timeout:.0f} s: killed"
                return None, step.output
            except OSError as exc:
                step.ok, step.output = False, f"could not run it: {exc}"
                return None, step.output
            step.exit_status = done.returncode
            step.ok = done.returncode == 0
            step.output = _tail("\n".join(p for p in (done.stdout, done.stderr) if p))
            return done.returncode, step.output

    def progress(self, percent: int) -> None:
        value = max(0, min(100, int(percent)))
        db_retry(
            lambda: Job.objects.filter(pk=self.job.pk).update(progress=value), "recording progress"
        )


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_TAIL_CHARS else "…" + text[-OUTPUT_TAIL_CHARS:]


# Jobs a thread of this process is claiming or running: a second delivery of one of them
# to this process is refused here, so that a claim retried after its answer was lost can
# tell its own committed UPDATE from another thread's.
_in_hand_lock = threading.Lock()
_in_hand: set[int] = set()


def claim(job_id: int, task_id: str) -> bool:
    """queued → running for this worker, once. The metadata database may not answer (a
    restart, a connection that timed out under load): tried again for METADATA_RETRY
    seconds, so that a delivered job is not dropped until the outbox's resend."""
    with _in_hand_lock:
        if job_id in _in_hand:
            return False
        _in_hand.add(job_id)
    me = worker_id()
    tried = False

    def attempt() -> bool:
        nonlocal tried
        if (
            tried
            and Job.objects.filter(
                pk=job_id, state=JobState.RUNNING, worker=me, task_id=task_id
            ).exists()
        ):
            return True  # the earlier attempt's UPDATE committed, its answer was lost
        tried = True
        return bool(
            Job.objects.filter(
                pk=job_id, state=JobState.QUEUED, cancel_requested=False, held=False
            ).update(
                state=JobState.RUNNING,
                started_at=timezone.now(),
                heartbeat_at=timezone.now(),
                task_id=task_id,
                worker=me,
            )
        )

    try:
        claimed = db_retry(attempt, "claiming the job")
    except BaseException:
        _let_go(job_id)
        raise
    if not claimed:
        _let_go(job_id)
    return claimed


def _let_go(job_id: int) -> None:
    with _in_hand_lock:
        _in_hand.discard(job_id)


def execute(job_id: int, task_id: str = "") -> str:
    """Run one job to its end. Returns its final state (for the task result).

    1. claim it (queued → running); if another worker has it, or it was cancelled, stop;
    2. take the lock(s) on its target, waiting a bounded time;
    3. run its operation with a context that records each step; the process's heartbeat
       thread beats its heartbeat and relays cancel requests and the time limit;
    4. end it: succeeded with a summary, failed with a one-line reason (an expected
       refusal), errored (an unexpected exception: a bug; its traceback is kept), or
       cancelled.
    """
    close_old_connections()

    if not claim(job_id, task_id):
        job = db_retry(lambda: Job.objects.filter(pk=job_id).first(), "reading the job")
        if job is None:
            log.warning("job #%s does not exist", job_id)
            return "missing"
        if job.state == JobState.RUNNING:
            # Redelivered after its worker died (acks_late): never run it twice.
            reap_lost_jobs(this_host_only=True)
        log.info("job #%s not claimed: it is %s", job_id, job.state)
        return Job.objects.get(pk=job_id).state
    try:
        return _run_claimed(job_id)
    finally:
        _let_go(job_id)


def _run_claimed(job_id: int) -> str:
    job = db_retry(lambda: Job.objects.with_related().get(pk=job_id), "loading the job")
    cancel = threading.Event()
    beating = heartbeat.add(job_id, cancel)
    lock = None
    ctx: JobContext | None = None
    state, summary, error, trace = JobState.FAILED, "", "", ""
    try:
        func = registered(job.kind)
        if func is None:
            raise JobFailed(
                f"no operation is registered for job kind {job.kind!r}: is this worker's "
                "ElepHaaS older than the web's?"
            )
        lock = take_lock(job, cancel)
        ctx = JobContext(job, cancel, lock)
        summary = func(ctx) or ""
        state = JobState.SUCCEEDED
    except JobCancelled:
        leaves = (ctx.leaves if ctx else "") or (
            "it stopped before its next step; check the target, then retry if needed"
        )
        if beating.timed_out:
            error = (
                f"ran past the time limit of {settings.JOB_TIME_LIMIT:.0f} s "
                f"(ELEPHAAS_JOB_TIME_LIMIT) and was stopped, its command with it: {leaves}"
            )
        else:
            state = JobState.CANCELLED
            by = Job.objects.filter(pk=job_id).values_list("cancel_requested_by", flat=True).first()
            error = f"cancelled by {by or 'a user'} while running: {leaves}"
    except JobFailed as exc:
        error = str(exc)
    except DB_LOST as exc:
        state = JobState.ERRORED
        error = (
            f"the metadata database did not answer for {settings.METADATA_RETRY:.0f} s "
            f"(ELEPHAAS_METADATA_RETRY): {type(exc).__name__}: {str(exc).strip()[:200]}; "
            "the target may be half-changed: check it, then retry"
        )
        trace = traceback.format_exc()
        log.exception("job #%s", job_id)
    except Exception as exc:  # noqa: BLE001 - the job must end visibly whatever happened
        state = JobState.ERRORED
        error = (
            f"a bug in ElepHaaS, not a refusal: {type(exc).__name__}: {exc}; the target may "
            "be half-changed: check it; the traceback is kept on the job"
        )
        trace = traceback.format_exc()
        log.exception("job #%s", job_id)
    finally:
        heartbeat.remove(job_id)
        if lock:
            lock.release()
    db_retry(
        lambda: Job.objects.filter(pk=job_id, state=JobState.RUNNING).update(
            state=state,
            finished_at=timezone.now(),
            summary=summary,
            error=error[:2000],
            traceback=trace,
            progress=F("progress") if state != JobState.SUCCEEDED else 100,
        ),
        "ending the job",
    )
    # Before the campaign advances: a site drill's end follows its last drill's.
    record_end(job, state, error or (summary.splitlines()[0] if summary else ""))
    advance_campaign_of(job_id)
    return state


def run_inline(jobs: Sequence[Job]) -> list[Job]:
    """Run jobs in this process (management commands): same lifecycle, no broker.

    The jobs are marked handed over (sent_at) before each one runs, so that the outbox
    sweep, which sends queued jobs nobody handed over, leaves those still waiting here
    to this process instead of giving them to a worker."""
    for number, job in enumerate(jobs):
        waiting = [j.pk for j in jobs[number:]]
        Job.objects.filter(pk__in=waiting, state=JobState.QUEUED).update(sent_at=timezone.now())
        execute(job.pk, task_id=job.task_id)
    return [Job.objects.get(pk=job.pk) for job in jobs]
