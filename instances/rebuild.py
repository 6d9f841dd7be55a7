"""Rebuild a replica: bring its data back in line with its upstream, then stream.

The decisions (which copy method, whether a rebuild must be refused) are pure functions
in `rebuild_planning`; this module gathers the facts over SSH and SQL, records each
decision as a step and carries it out with the shared steps (instances.steps) and the
command builders (instances.commands).

Never copy into a running cluster: every path stops the instance first and checks with the
status command. Credentials come only from ~postgres/.pgpass on the servers (the
replicator for pg_basebackup and streaming, the probe role for pg_rewind): no password
appears on a command line or in a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.utils import timezone

from instances import audit, commands, inventory, probe, ssh, steps
from instances import rebuild_planning as rp
from instances.choices import CopyMethod, JobKind, Role
from instances.jobs import queue
from instances.jobs.registry import JobCancelled, JobFailed, operation
from instances.jobs.runner import DB_LOST, JobContext, server_slot
from instances.models import Instance, JobStep
from instances.wal import format_bytes, wal_segment_number

log = logging.getLogger("elephaas.rebuild")

PROGRESS_INTERVAL = 1.0

# Configuration files a replica keeps across a copy: its own ALTER SYSTEM settings and, in
# the pg_ctl layout, its own postgresql.conf and access rules (the upstream's name the
# upstream's address). Set aside once: a retry after a failed copy must not overwrite the
# saved files with nothing.
KEEP_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")


def load(pk: int) -> Instance:
    return Instance.objects.select_related("server", "herd", "upstream__server").get(pk=pk)


def check_data_dir(instance: Instance) -> str:
    """The directory a rebuild empties: refuse anything that looks like a system folder."""
    path = instance.effective_data_dir
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or len(parts) < 2 or ".." in parts:
        raise JobFailed(
            f"{instance.label}: refusing to empty the data directory {path!r}: it must be an "
            "absolute path at least two folders deep"
        )
    return path


def resolve_upstream(instance: Instance) -> Instance:
    """Where it copies from: inventory.choose_upstream, the same choice the confirmation
    page shows."""
    upstream = inventory.choose_upstream(instance, inventory.herd_instances(instance.herd_id))
    if upstream is None:
        raise JobFailed(
            f"{instance.label}: its herd has no other primary recorded to copy from; run "
            "discovery, or set its upstream"
        )
    return load(upstream.pk)


def upstream_facts(instance: Instance, upstream: Instance) -> probe.ControlFacts:
    try:
        return probe.control_facts(upstream.server.hostname, upstream.port)
    except probe.ProbeError as exc:
        raise JobFailed(
            f"the upstream {upstream.label} does not answer ({exc}): nothing was changed on "
            f"{instance.label} yet; start the upstream or choose another, then retry"
        ) from None


# --- progress ----------------------------------------------------------------------------------


class CopyMonitor(threading.Thread):
    """Measures a running copy every second on a connection of its own (the SSH runner is
    thread-safe) and writes it to the job: its progress and the copy step's output."""

    def __init__(
        self,
        ctx: JobContext,
        step: JobStep,
        measure: Callable[[], rp.Progress | None],
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        super().__init__(name=f"job-{ctx.job.pk}-copy-progress", daemon=True)
        self.ctx, self.step, self.measure, self.interval = ctx, step, measure, interval
        self.stopped = threading.Event()
        self.last: rp.Progress | None = None
        self.samples = 0
        self._previous: tuple[float, int] | None = None

    def sample(self) -> rp.Progress | None:
        progress = self.measure()
        if progress is None:
            return None
        now = time.monotonic()
        if progress.rate is None and self._previous is not None:
            seconds = now - self._previous[0]
            if seconds > 0:
                rate = max(0.0, (progress.done - self._previous[1]) / seconds)
                progress = rp.Progress(progress.done, progress.total, progress.percent, rate)
        self._previous = (now, progress.done)
        return progress

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    progress = self.sample()
                except Exception:  # noqa: BLE001 - a missed measure is not a failed copy
                    log.debug("job #%s: progress measure failed", self.ctx.job.pk, exc_info=True)
                    continue
                if progress is None or self.stopped.is_set():
                    continue
                self.last = progress
                self.samples += 1
                try:
                    JobStep.objects.filter(pk=self.step.pk).update(output=progress.describe())
                    self.ctx.progress(rp.job_percent(progress.percent))
                except DB_LOST:
                    # The metadata database restarted: the copy goes on; so does the
                    # monitor, on a new connection at its next sample.
                    connection.close()
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)

    @property
    def percent(self) -> int:
        return self.last.percent if self.last else 0


def _measure_du(instance: Instance, total: int) -> Callable[[], rp.Progress | None]:
    def measure() -> rp.Progress | None:
        with server_slot(instance.server.hostname):
            # du complains about files that vanish under it, and still prints the total.
            result = ssh.run(
                instance.server, ["du", "-sb", instance.effective_data_dir], timeout=30, check=False
            )
        if not result.stdout.strip():
            return None
        return rp.copy_progress(rp.parse_du(result.stdout), total, None)

    return measure


def _measure_rsync_log(instance: Instance, logfile: str) -> Callable[[], rp.Progress | None]:
    def measure() -> rp.Progress | None:
        with server_slot(instance.server.hostname):
            result = ssh.run(
                instance.server, ["tail", "-c", "2048", logfile], timeout=30, check=False
            )
        return rp.parse_rsync_progress(result.stdout)

    return measure


def run_copy(
    ctx: JobContext,
    instance: Instance,
    method: str,
    argv: list[str],
    measure: Callable[[], rp.Progress | None],
) -> str:
    """Run the copy command with a monitor; returns the final figures. A failure says at
    which percentage it stopped and what is left."""
    started = time.monotonic()
    with ctx.step(f"copy progress ({method})", instance.server.hostname) as step:
        monitor = CopyMonitor(ctx, step, measure)
        monitor.start()
        try:
            ctx.ssh(
                instance.server,
                argv,
                f"copy the data directory ({method})",
                timeout=settings.JOB_TIME_LIMIT,
            )
        except JobCancelled:
            monitor.stop()
            step.output = (
                f"cancelled at {monitor.percent}%: the data directory is incomplete; the "
                "instance is stopped; rebuild it again"
            )
            ctx.leaves = (
                f"the copy stopped at {monitor.percent}%: the data directory of "
                f"{instance.label} is incomplete and marked so, the instance is stopped; "
                "rebuild it again"
            )
            raise
        except JobFailed as exc:
            monitor.stop()
            step.output = f"failed at {monitor.percent}%"
            raise JobFailed(
                f"{instance.label}: copy ({method}) failed at {monitor.percent}%: {exc}; the "
                "data directory is incomplete and the instance is stopped: retry the rebuild"
            ) from None
        monitor.stop()
        seconds = time.monotonic() - started
        try:
            final = monitor.sample()
        except Exception:  # noqa: BLE001 - the copy succeeded; the figures are a nicety
            final = monitor.last
        done = final.done if final else 0
        rate = done / seconds if seconds > 0 else 0.0
        step.output = (
            f"copied {format_bytes(done)} in {seconds:.1f} s ({format_bytes(int(rate))}/s), "
            f"{monitor.samples} progress report(s)"
        )
    ctx.progress(rp.job_percent(100))
    return step.output


def rewind(ctx: JobContext, instance: Instance, upstream: Instance) -> bool:
    """pg_rewind from the upstream; False when it failed (the caller falls back to a copy)."""
    try:
        steps.checkpoint_rewind_source(ctx, upstream, instance)
    except JobFailed as exc:
        raise JobFailed(f"{exc}: retry the rebuild") from None
    try:
        steps.rewind(ctx, instance, upstream, timeout=settings.JOB_TIME_LIMIT)
    except JobFailed as exc:
        ctx.note(
            "pg_rewind failed: falling back to a full copy (pg_basebackup)",
            f"{exc}",
            instance.server.hostname,
        )
        return False
    ctx.progress(rp.job_percent(100))
    return True


def _kept_dir(instance: Instance) -> str:
    return f"{check_data_dir(instance)}.elephaas-kept"


def keep_aside(ctx: JobContext, instance: Instance, files: tuple[str, ...]) -> None:
    ctx.ssh(
        instance.server,
        commands.keep_aside(instance.effective_data_dir, _kept_dir(instance), files),
        "keep its own configuration files aside (" + ", ".join(files) + ")",
    )


def put_back(ctx: JobContext, instance: Instance) -> None:
    ctx.ssh(
        instance.server,
        commands.put_back(instance.effective_data_dir, _kept_dir(instance)),
        "put its own configuration files back",
    )


def max_rate_kb(ctx: JobContext) -> int | None:
    """params["max_rate_kb"]: limit a full copy's transfer rate (kB/s) to spare the
    upstream's disks and network; pg_basebackup --max-rate, rsync --bwlimit."""
    value = ctx.job.params.get("max_rate_kb")
    if value in (None, "", 0):
        return None
    if not isinstance(value, int) or value < 32:
        raise JobFailed(f"max_rate_kb must be a whole number of kB/s, at least 32: {value!r}")
    return value


def copy_basebackup(ctx: JobContext, instance: Instance, upstream: Instance, total: int) -> str:
    data_dir = check_data_dir(instance)
    ctx.ssh(instance.server, commands.empty_data_dir(data_dir), "empty the data directory")
    return run_copy(
        ctx,
        instance,
        rp.PG_BASEBACKUP,
        commands.pg_basebackup(
            steps.bindir(instance),
            data_dir,
            host=upstream.server.hostname,
            port=upstream.port,
            user=settings.REPLICATION_USER,
            label=f"elephaas job {ctx.job.pk}",
            max_rate_kb=max_rate_kb(ctx),
        ),
        _measure_du(instance, total),
    )


def copy_rsync(ctx: JobContext, instance: Instance, upstream: Instance) -> str:
    """rsync from the upstream's server inside pg_backup_start / pg_backup_stop (one
    session), then the backup_label it returns; streaming fetches the WAL of the copy."""
    data_dir = check_data_dir(instance)
    logfile = f"{data_dir}.elephaas-rsync.log"
    ctx.ssh(
        instance.server,
        commands.clean_for_rsync(data_dir),
        "clear what rsync leaves out (pg_wal, pg_replslot, postmaster.pid, …)",
    )
    label = f"elephaas job {ctx.job.pk}"
    with ctx.step("pg_backup_start on the upstream", upstream.address) as step:
        try:
            session = probe.BackupSession(upstream.server.hostname, upstream.port, label)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{upstream.label}: pg_backup_start failed ({exc}); {instance.label} is "
                "stopped: retry the rebuild"
            ) from None
        step.output = f"backup started at {session.start_lsn}"
    with session:
        source = upstream.server
        rsync = [
            "rsync",
            "-a",
            "--delete",
            # Compare contents, not size and mtime: a replica's file and the upstream's can
            # have both in common and differ (both written in the same second) — skipping
            # it would leave stale pages or commit status that WAL replay never repairs.
            "--checksum",
            "--no-inc-recursive",
            "--info=progress2",
            *([f"--bwlimit={max_rate_kb(ctx)}"] if max_rate_kb(ctx) else []),
            "-e",
            commands.ssh_transport(source.ssh_port),
            *[f"--exclude={pattern}" for pattern in rp.RSYNC_EXCLUDES],
            commands.remote_path(source.ssh_user, source.hostname, upstream.effective_data_dir),
            f"{data_dir}/",
        ]
        figures = run_copy(
            ctx,
            instance,
            rp.RSYNC,
            commands.logged(logfile, rsync),
            _measure_rsync_log(instance, logfile),
        )
        with ctx.step("pg_backup_stop on the upstream", upstream.address) as step:
            try:
                stop_lsn, backup_label, tablespace_map = session.stop()
            except probe.ProbeError as exc:
                raise JobFailed(
                    f"{upstream.label}: pg_backup_stop failed ({exc}); the copy on "
                    f"{instance.label} is unusable and it is stopped: retry the rebuild"
                ) from None
            step.output = f"backup ended at {stop_lsn}"
    ctx.ssh(
        instance.server,
        commands.write_file(f"{data_dir}/backup_label"),
        "write the backup_label pg_backup_stop returned",
        input=backup_label,
    )
    if tablespace_map.strip():
        ctx.ssh(
            instance.server,
            commands.write_file(f"{data_dir}/tablespace_map"),
            "write the tablespace_map pg_backup_stop returned",
            input=tablespace_map,
        )
    ctx.ssh(
        instance.server,
        commands.prepare_pg_wal(data_dir, logfile),
        "prepare pg_wal for streaming",
    )
    return figures


def start_as_standby(ctx: JobContext, instance: Instance, upstream: Instance) -> probe.ProbeResult:
    """standby.signal and primary_conninfo, start, wait until it streams from the upstream;
    update the row (a rebuilt old primary is no longer fenced)."""
    steps.write_standby_config(ctx, instance, upstream)
    start_conf = steps.start_conf(instance)
    if instance.fenced and start_conf:
        ctx.ssh(
            instance.server,
            commands.start_conf_auto(start_conf),
            "let it start at boot again (start.conf: auto)",
        )
    # It is a replica of the new primary now: the fence (if any) is lifted.
    ctx.ssh(
        instance.server,
        commands.unfence(steps.fence_marker(instance)),
        "lift the fence (remove the fence marker)",
    )
    steps.start(ctx, instance, "start as a replica")
    ctx.progress(90)
    steps.wait_streaming(ctx, instance, upstream)
    ctx.ssh(
        instance.server,
        commands.clear_incomplete(marker_path(instance), steps.start_conf(instance)),
        "it streams: remove the marker (and let it start at boot again)",
    )
    ctx.leaves = ""
    result, error = steps.try_probe(instance)
    if result is None:
        raise JobFailed(f"{instance.label} streamed, then stopped answering ({error})")
    now = timezone.now()
    Instance.objects.filter(pk=instance.pk).update(
        role=Role.REPLICA,
        upstream=upstream,
        streams_from=upstream.address,
        needs_rebuild=False,
        needs_remaster=False,
        fenced=False,
        fence_confirmed_at=None,
        rebuild_job=None,
        online=True,
        upstream_streaming=True,
        last_checked=now,
        state_changed_at=now,
        last_error="",
        last_lsn=result.lsn,
        receive_lsn=result.receive_lsn or "",
        replay_lsn=result.replay_lsn or "",
        lag_bytes=result.lag_bytes,
        lag_seconds=result.lag_seconds,
    )
    return result


def marker_path(instance: Instance) -> str:
    return f"{check_data_dir(instance)}.elephaas-incomplete"


def mark_incomplete(ctx: JobContext, instance: Instance) -> None:
    """Before the data directory is touched: the marker beside it, start.conf held at
    manual (Debian), and the row flagged, so that nothing starts, promotes or rewinds a
    half-copied cluster; cleared by start_as_standby once it streams."""
    ctx.ssh(
        instance.server,
        commands.mark_incomplete(marker_path(instance), ctx.job.pk, steps.start_conf(instance)),
        "mark its data directory as being replaced (and keep it from starting at boot)",
    )
    if instance.rebuild_job is None:
        Instance.objects.filter(pk=instance.pk).update(rebuild_job=ctx.job.pk)
        instance.rebuild_job = ctx.job.pk
    ctx.leaves = (
        f"the data directory of {instance.label} is incomplete and marked so, and the "
        "instance is stopped: retry the rebuild"
    )


def rebuild_from(
    ctx: JobContext, instance: Instance, upstream: Instance, requested: str, *, fresh: bool = False
) -> str:
    """The rebuild proper, shared by REBUILD and INIT.

    1. check the upstream answers (and learn its system identifier, WAL, size);
    2. stop the instance (fast) and check with the status command that it is stopped;
    3. read its control file; choose pg_rewind or a full copy; record why;
    4. pg_rewind (falling back to pg_basebackup if it fails), or the full copy with progress;
    5. standby.signal + primary_conninfo, start, wait until it streams; update the row.
    """
    facts = upstream_facts(instance, upstream)
    ctx.progress(2)
    steps.ensure_stopped(ctx, instance, "before touching its data directory")
    steps.record(instance, None, "stopped for a rebuild")
    ctx.check_cancel()
    if fresh:
        decision = rp.Decision(requested, "a new instance starts from a full copy of its upstream")
    else:
        control, control_error = steps.read_controldata(ctx, instance)
        oldest = None
        if facts.oldest_wal and control is not None:
            oldest = wal_segment_number(facts.oldest_wal, control.segment_size)
        decision = rp.choose_method(
            rp.RebuildFacts(
                requested=requested,
                control=control,
                control_error=control_error,
                upstream_system_identifier=facts.system_identifier,
                upstream_oldest_segment=oldest,
                upstream_timeline=facts.timeline,
                unfinished_job=instance.rebuild_job,
            )
        )
    ctx.note(
        decision.sentence,
        f"{decision.sentence}\nupstream: {upstream.label}",
        instance.server.hostname,
    )
    mark_incomplete(ctx, instance)
    # A new instance keeps only what ElepHaaS wrote (its address and port, pg_ctl layout);
    # an existing replica keeps all of its own configuration.
    keep_aside(ctx, instance, ("postgresql.auto.conf",) if fresh else KEEP_FILES)
    method, figures = decision.method, ""
    if method == rp.PG_REWIND and not rewind(ctx, instance, upstream):
        method = rp.PG_BASEBACKUP
    if method == rp.PG_BASEBACKUP:
        figures = copy_basebackup(ctx, instance, upstream, facts.database_size)
    elif method == rp.RSYNC:
        figures = copy_rsync(ctx, instance, upstream)
    put_back(ctx, instance)
    ctx.check_cancel()
    try:
        result = start_as_standby(ctx, instance, upstream)
    except JobFailed as exc:
        raise JobFailed(
            f"{exc} — its data is in place ({method}); check its log, then start it or retry "
            "the rebuild"
        ) from None
    lag = format_bytes(result.lag_bytes) if result.lag_bytes is not None else "unknown"
    seconds = f", {result.lag_seconds:.1f} s" if result.lag_seconds is not None else ""
    return (
        f"{instance.label} rebuilt from {upstream.label} with {method}"
        + (f" ({figures})" if figures else "")
        + f"; streaming, lag {lag}{seconds}"
    )


@operation(JobKind.REBUILD)
def rebuild(ctx: JobContext) -> str:
    """Rebuild a replica from its upstream (or the herd's primary): see rebuild_from.
    Refused for a primary or an instance with replicas of its own unless params["force"]."""
    instance = load(ctx.job.instance_id)
    params = ctx.job.params
    requested = params.get("method") or CopyMethod.AUTO
    if requested not in rp.METHODS:
        raise JobFailed(f"method {requested!r} is not one of {', '.join(rp.METHODS)}")
    max_rate_kb(ctx)  # a bad value fails here, before anything is stopped
    live, _error = steps.try_probe(instance)
    downstreams = [
        i.label for i in Instance.objects.select_related("server", "herd").filter(upstream=instance)
    ]
    refusal = rp.rebuild_refusal(
        label=instance.label,
        recorded_primary=instance.role == Role.PRIMARY,
        live_primary=live is not None and not live.in_recovery,
        downstreams=downstreams,
        fenced=instance.fenced,
        force=bool(params.get("force")),
        unfinished=instance.rebuild_job is not None,
    )
    if refusal:
        raise JobFailed(f"refusing to rebuild: {refusal}")
    upstream = resolve_upstream(instance)
    if params.get("force") and (downstreams or instance.role == Role.PRIMARY):
        ctx.note(
            "forced",
            f"the DBA ticked 'force': {instance.label} is "
            + ("a primary" if instance.role == Role.PRIMARY else "an upstream")
            + (f" of {', '.join(downstreams)}" if downstreams else ""),
        )
    summary = rebuild_from(ctx, instance, upstream, requested)
    return summary + queue_dns_refresh(ctx, instance)


def queue_dns_refresh(ctx: JobContext, instance: Instance) -> str:
    """A rebuilt replica streams again: the herd's read-only vhost must list it. The DNS
    boundary is the herds app's, so a Refresh DNS job of the herd is queued (several queued
    together collapse into one)."""
    herd = instance.herd
    if not herd.ro_vhost:
        return ""
    [job] = queue.create_jobs(
        JobKind.REFRESH_DNS,
        [herd],
        user=ctx.job.requested_by,
        origin=ctx.job.origin,
        remote=audit.WORKER,
    )
    ctx.note(
        "DNS",
        f"queued job #{job.pk} (refresh DNS of {herd.name}) so that "
        f"{herd.ro_vhost} lists {instance.label}",
    )
    return f"; DNS refresh of {herd.name} queued (job #{job.pk})"
