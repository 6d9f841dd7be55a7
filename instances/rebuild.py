"""Rebuild a replica, point it at another upstream (remaster), create a new instance (init).

The decisions (which copy method, whether an upstream is behind, whether a rebuild must be
refused) are pure functions in `rebuild_planning`; this module gathers the facts over SSH
and SQL, records each decision as a step and carries it out.

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

from herds import drills
from herds.planning import format_bytes, int_to_lsn, lsn_to_int
from instances import lifecycle, probe, ssh
from instances import rebuild_planning as rp
from instances.choices import Role
from instances.jobs import JobCancelled, JobContext, JobFailed, operation, server_slot
from instances.models import Instance, JobKind, JobStep

log = logging.getLogger("elephaas.rebuild")

# pg_ctl / pg_ctlcluster status: 0 running, 3 not running, 4 no cluster in the directory.
STATUS_RUNNING, STATUS_STOPPED, STATUS_NO_CLUSTER = 0, 3, 4
PROGRESS_INTERVAL = 1.0

# Configuration files a replica keeps across a copy: its own ALTER SYSTEM settings and, in
# the pg_ctl layout, its own postgresql.conf and access rules (the upstream's name the
# upstream's address). Set aside once: a retry after a failed copy must not overwrite the
# saved files with nothing.
KEEP_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")
KEEP_ASIDE = r"""
set -e
dir="$1"; kept="$2"; shift 2
mkdir -p "$kept"
for f in "$@"; do
  if [ -f "$dir/$f" ] && [ ! -f "$kept/$f" ]; then cp -p "$dir/$f" "$kept/$f"; fi
done
ls "$kept"
"""
PUT_BACK = r"""
set -e
dir="$1"; kept="$2"
[ -d "$kept" ] || exit 0
for f in "$kept"/*; do
  [ -f "$f" ] || continue
  mv "$f" "$dir/"
  echo "kept its own $(basename "$f")"
done
rmdir "$kept"
"""
EMPTY_DATA_DIR = r"""
set -e
mkdir -p "$1"
chmod 700 "$1"
find "$1" -mindepth 1 -delete
"""
# Before an rsync copy: what rsync excludes must not survive from the old cluster either.
CLEAN_FOR_RSYNC = r"""
set -e
dir="$1"
mkdir -p "$dir"
chmod 700 "$dir"
for sub in pg_wal pg_replslot pg_dynshmem pg_notify pg_serial pg_snapshots pg_stat_tmp \
           pg_subtrans; do
  if [ -d "$dir/$sub" ]; then find "$dir/$sub" -mindepth 1 -delete; fi
done
rm -f "$dir/postmaster.pid" "$dir/postmaster.opts" "$dir/backup_label" "$dir/tablespace_map" \
      "$dir/standby.signal" "$dir/recovery.signal"
"""
# rsync's exit status 24 ("some files vanished") is normal when copying a live cluster.
RSYNC_WRAPPER = r"""
log="$1"; shift
"$@" > "$log"
rc=$?
[ "$rc" -eq 24 ] && rc=0
exit "$rc"
"""
WRITE_FILE = r"""
umask 077
cat > "$1"
"""
START_CONF_AUTO = r"""
f="$1"
if [ -f "$f" ] && grep -qx manual "$f"; then echo auto > "$f"; echo "start.conf: manual -> auto"; fi
"""
# Debian layout: the instance's own address and port, after the herd's configuration.
INSTANCE_CONF = "zz-elephaas-instance.conf"
WRITE_INSTANCE_CONF = r"""
mkdir -p "$1/conf.d"
printf '%s\n' "# written by ElepHaaS: this instance's own address and port" "$2" "$3" \
  > "$1/conf.d/$4"
"""
# pg_ctl layout (configuration in the data directory): the same two settings in
# postgresql.auto.conf, replacing any earlier value.
SET_AUTO_CONF = r"""
set -e
auto="$1/postgresql.auto.conf"; shift
touch "$auto"
cp "$auto" "$auto.elephaas"
for kv in "$@"; do
  key="${kv%%=*}"
  grep -v "^[[:space:]]*$key[[:space:]]*=" "$auto.elephaas" > "$auto.elephaas2" || true
  mv "$auto.elephaas2" "$auto.elephaas"
  printf '%s\n' "$kv" >> "$auto.elephaas"
done
mv "$auto.elephaas" "$auto"
"""


def _load(pk: int) -> Instance:
    return Instance.objects.select_related("server", "herd", "upstream__server").get(pk=pk)


def where(instance: Instance) -> str:
    return lifecycle.where(instance)


def _hostport(instance: Instance) -> str:
    return f"{instance.server.hostname}:{instance.port}"


def _check_data_dir(instance: Instance) -> str:
    """The directory a rebuild empties: refuse anything that looks like a system folder."""
    path = instance.effective_data_dir
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or len(parts) < 2 or ".." in parts:
        raise JobFailed(
            f"{where(instance)}: refusing to empty the data directory {path!r}: it must be an "
            "absolute path at least two folders deep"
        )
    return path


def resolve_upstream(instance: Instance) -> Instance:
    """Its recorded upstream, else the herd's primary (never itself, never a fenced one)."""
    if instance.upstream_id and instance.upstream_id != instance.pk:
        upstream = _load(instance.upstream_id)
        if not upstream.fenced:
            return upstream
    others = [i for i in drills.herd_instances(instance.herd) if i.pk != instance.pk]
    primary = drills.recorded_primary(others)
    if primary is None:
        raise JobFailed(
            f"{where(instance)}: its herd has no other primary recorded to copy from; run "
            "discovery, or set its upstream"
        )
    return _load(primary.pk)


# --- status and stop -------------------------------------------------------------------------


def cluster_state(ctx: JobContext, instance: Instance) -> str:
    """ "running", "stopped", or "empty" (no cluster in its data directory, or none)."""
    status = ctx.ssh(
        instance.server, lifecycle.command_for("status", instance), "check status", check=False
    )
    if status.exit_status == STATUS_RUNNING:
        return "running"
    if status.exit_status == STATUS_STOPPED:
        return "stopped"
    if status.exit_status == STATUS_NO_CLUSTER:
        return "empty"
    exists = ctx.ssh(
        instance.server,
        ["test", "-d", instance.effective_data_dir],
        "does the data directory exist?",
        check=False,
    )
    if exists.exit_status == 1:
        return "empty"
    detail = (status.stderr or status.stdout).strip().splitlines()
    raise JobFailed(
        f"{where(instance)}: status check failed (exit {status.exit_status}: "
        f"{detail[-1] if detail else 'no output'}); is the cluster configured on this server?"
    )


def ensure_stopped(ctx: JobContext, instance: Instance) -> str:
    state = cluster_state(ctx, instance)
    if state == "running":
        try:
            ctx.ssh(
                instance.server,
                lifecycle.command_for("stop", instance, mode="fast"),
                "stop it (fast) before touching its data directory",
            )
        except JobFailed as exc:
            raise JobFailed(
                f"could not stop {where(instance)} ({exc}); nothing was copied: stop it by "
                "hand, then retry"
            ) from None
        state = cluster_state(ctx, instance)
        if state == "running":
            raise JobFailed(
                f"{where(instance)}: still running after the stop command; nothing was "
                "copied: stop it by hand, then retry"
            )
    lifecycle.record(instance, None, "stopped for a rebuild")
    return state


def read_controldata(ctx: JobContext, instance: Instance) -> tuple[rp.ControlData | None, str]:
    result = ctx.ssh(
        instance.server,
        [
            "env",
            "LC_ALL=C",
            f"{drills.bindir(instance)}/pg_controldata",
            "-D",
            instance.effective_data_dir,
        ],
        "read its control file (pg_controldata)",
        check=False,
    )
    if result.exit_status != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"exit status {result.exit_status}"
    try:
        return rp.parse_controldata(result.stdout), ""
    except rp.ParseError as exc:
        return None, str(exc)


def upstream_facts(instance: Instance, upstream: Instance) -> probe.ControlFacts:
    try:
        return probe.control_facts(upstream.server.hostname, upstream.port)
    except probe.ProbeError as exc:
        raise JobFailed(
            f"the upstream {where(upstream)} does not answer ({exc}): nothing was changed on "
            f"{where(instance)} yet; start the upstream or choose another, then retry"
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
                JobStep.objects.filter(pk=self.step.pk).update(output=progress.describe())
                self.ctx.progress(rp.job_percent(progress.percent))
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
            raise
        except JobFailed as exc:
            monitor.stop()
            step.output = f"failed at {monitor.percent}%"
            raise JobFailed(
                f"{where(instance)}: copy ({method}) failed at {monitor.percent}%: {exc}; the "
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


# --- the three ways to bring a replica back ----------------------------------------------------


def rewind(ctx: JobContext, instance: Instance, upstream: Instance) -> bool:
    """pg_rewind from the upstream; False when it failed (the caller falls back to a copy)."""
    # pg_rewind reads the source's timeline from its control file, which a promoted server
    # updates only at its first checkpoint (see herds.drills.rejoin_as_replica).
    with ctx.step(
        "checkpoint the upstream (its control file shows its timeline)", _hostport(upstream)
    ):
        try:
            probe.checkpoint(upstream.server.hostname, upstream.port)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{where(upstream)}: CHECKPOINT failed ({exc}); {where(instance)} is stopped, "
                "its data untouched: retry the rebuild"
            ) from None
    source = (
        f"host={upstream.server.hostname} port={upstream.port} "
        f"user={settings.PG_PROBE_USER} dbname={settings.PG_PROBE_DATABASE}"
    )
    try:
        ctx.ssh(
            instance.server,
            [
                "env",
                "LC_ALL=C",
                f"{drills.bindir(instance)}/pg_rewind",
                "--target-pgdata",
                instance.effective_data_dir,
                "--source-server",
                source,
                "--progress",
            ],
            "pg_rewind from the upstream",
            timeout=settings.JOB_TIME_LIMIT,
        )
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
    return f"{_check_data_dir(instance)}.elephaas-kept"


def keep_aside(ctx: JobContext, instance: Instance, files: tuple[str, ...]) -> None:
    ctx.ssh(
        instance.server,
        ["sh", "-c", KEEP_ASIDE, "sh", instance.effective_data_dir, _kept_dir(instance), *files],
        "keep its own configuration files aside (" + ", ".join(files) + ")",
    )


def put_back(ctx: JobContext, instance: Instance) -> None:
    ctx.ssh(
        instance.server,
        ["sh", "-c", PUT_BACK, "sh", instance.effective_data_dir, _kept_dir(instance)],
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
    data_dir = _check_data_dir(instance)
    ctx.ssh(
        instance.server, ["sh", "-c", EMPTY_DATA_DIR, "sh", data_dir], "empty the data directory"
    )
    return run_copy(
        ctx,
        instance,
        rp.PG_BASEBACKUP,
        [
            f"{drills.bindir(instance)}/pg_basebackup",
            "--host",
            upstream.server.hostname,
            "--port",
            str(upstream.port),
            "--username",
            settings.REPLICATION_USER,
            "--no-password",
            "--pgdata",
            data_dir,
            "--wal-method",
            "stream",
            "--checkpoint",
            "fast",
            "--label",
            f"elephaas job {ctx.job.pk}",
            "--progress",
            *([f"--max-rate={max_rate_kb(ctx)}k"] if max_rate_kb(ctx) else []),
        ],
        _measure_du(instance, total),
    )


def copy_rsync(ctx: JobContext, instance: Instance, upstream: Instance) -> str:
    """rsync from the upstream's server inside pg_backup_start / pg_backup_stop (one
    session), then the backup_label it returns; streaming fetches the WAL of the copy."""
    data_dir = _check_data_dir(instance)
    logfile = f"{data_dir}.elephaas-rsync.log"
    ctx.ssh(
        instance.server,
        ["sh", "-c", CLEAN_FOR_RSYNC, "sh", data_dir],
        "clear what rsync leaves out (pg_wal, pg_replslot, postmaster.pid, …)",
    )
    label = f"elephaas job {ctx.job.pk}"
    with ctx.step("pg_backup_start on the upstream", _hostport(upstream)) as step:
        try:
            session = probe.BackupSession(upstream.server.hostname, upstream.port, label)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{where(upstream)}: pg_backup_start failed ({exc}); {where(instance)} is "
                "stopped: retry the rebuild"
            ) from None
        step.output = f"backup started at {session.start_lsn}"
    with session:
        source = upstream.server
        argv = [
            "sh",
            "-c",
            RSYNC_WRAPPER,
            "sh",
            logfile,
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
            f"ssh -p {int(source.ssh_port)} -o BatchMode=yes",
            *[f"--exclude={pattern}" for pattern in rp.RSYNC_EXCLUDES],
            f"{source.ssh_user}@{source.hostname}:{upstream.effective_data_dir}/",
            f"{data_dir}/",
        ]
        figures = run_copy(ctx, instance, rp.RSYNC, argv, _measure_rsync_log(instance, logfile))
        with ctx.step("pg_backup_stop on the upstream", _hostport(upstream)) as step:
            try:
                stop_lsn, backup_label, tablespace_map = session.stop()
            except probe.ProbeError as exc:
                raise JobFailed(
                    f"{where(upstream)}: pg_backup_stop failed ({exc}); the copy on "
                    f"{where(instance)} is unusable and it is stopped: retry the rebuild"
                ) from None
            step.output = f"backup ended at {stop_lsn}"
    ctx.ssh(
        instance.server,
        ["sh", "-c", WRITE_FILE, "sh", f"{data_dir}/backup_label"],
        "write the backup_label pg_backup_stop returned",
        input=backup_label,
    )
    if tablespace_map.strip():
        ctx.ssh(
            instance.server,
            ["sh", "-c", WRITE_FILE, "sh", f"{data_dir}/tablespace_map"],
            "write the tablespace_map pg_backup_stop returned",
            input=tablespace_map,
        )
    ctx.ssh(
        instance.server,
        ["sh", "-c", 'mkdir -p "$1/pg_wal/archive_status"; rm -f "$2"', "sh", data_dir, logfile],
        "prepare pg_wal for streaming",
    )
    return figures


def start_as_standby(ctx: JobContext, instance: Instance, upstream: Instance) -> probe.ProbeResult:
    """standby.signal and primary_conninfo (via herds.drills), start, wait until it streams
    from the upstream; update the row."""
    conninfo = drills.conninfo_for(upstream, instance)
    ctx.ssh(
        instance.server,
        [
            "sh",
            "-c",
            drills.STANDBY_CONFIG,
            "sh",
            instance.effective_data_dir,
            f"primary_conninfo = '{conninfo.replace(chr(39), chr(39) * 2)}'",
        ],
        f"configure as a standby of {where(upstream)}",
    )
    if instance.fenced and settings.COMMANDS_PRESET == "debian":
        ctx.ssh(
            instance.server,
            [
                "sh",
                "-c",
                START_CONF_AUTO,
                "sh",
                f"/etc/postgresql/{instance.effective_pg_version}/"
                f"{instance.effective_cluster_name}/start.conf",
            ],
            "let it start at boot again (start.conf: auto)",
        )
    ctx.ssh(instance.server, lifecycle.command_for("start", instance), "start as a replica")
    ctx.progress(90)
    drills.wait_streaming(ctx, instance, upstream)
    result, error = lifecycle.try_probe(instance)
    if result is None:
        raise JobFailed(f"{where(instance)} streamed, then stopped answering ({error})")
    now = timezone.now()
    Instance.objects.filter(pk=instance.pk).update(
        role=Role.REPLICA,
        upstream=upstream,
        streams_from=upstream.address,
        needs_rebuild=False,
        fenced=False,
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
    ensure_stopped(ctx, instance)
    ctx.check_cancel()
    if fresh:
        decision = rp.Decision(requested, "a new instance starts from a full copy of its upstream")
    else:
        control, control_error = read_controldata(ctx, instance)
        oldest = None
        if facts.oldest_wal and control is not None:
            oldest = rp.wal_segment_number(facts.oldest_wal, control.segment_size)
        decision = rp.choose_method(
            rp.RebuildFacts(
                requested=requested,
                control=control,
                control_error=control_error,
                upstream_system_identifier=facts.system_identifier,
                upstream_oldest_segment=oldest,
                upstream_timeline=facts.timeline,
            )
        )
    ctx.note(
        decision.sentence,
        f"{decision.sentence}\nupstream: {where(upstream)}",
        instance.server.hostname,
    )
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
        f"{where(instance)} rebuilt from {where(upstream)} with {method}"
        + (f" ({figures})" if figures else "")
        + f"; streaming, lag {lag}{seconds}"
    )


@operation(JobKind.REBUILD)
def rebuild(ctx: JobContext) -> str:
    """Rebuild a replica from its upstream (or the herd's primary): see rebuild_from.
    Refused for a primary or an instance with replicas of its own unless params["force"]."""
    instance = _load(ctx.job.instance_id)
    params = ctx.job.params
    requested = params.get("method") or "auto"
    if requested not in rp.METHODS:
        raise JobFailed(f"method {requested!r} is not one of {', '.join(rp.METHODS)}")
    max_rate_kb(ctx)  # a bad value fails here, before anything is stopped
    live, _error = lifecycle.try_probe(instance)
    downstreams = [
        where(i)
        for i in Instance.objects.select_related("server", "herd").filter(upstream=instance)
    ]
    refusal = rp.rebuild_refusal(
        label=where(instance),
        recorded_primary=instance.role == Role.PRIMARY,
        live_primary=live is not None and not live.in_recovery,
        downstreams=downstreams,
        fenced=instance.fenced,
        force=bool(params.get("force")),
    )
    if refusal:
        raise JobFailed(f"refusing to rebuild: {refusal}")
    upstream = resolve_upstream(instance)
    if params.get("force") and (downstreams or instance.role == Role.PRIMARY):
        ctx.note(
            "forced",
            f"the DBA ticked 'force': {where(instance)} is "
            + ("a primary" if instance.role == Role.PRIMARY else "an upstream")
            + (f" of {', '.join(downstreams)}" if downstreams else ""),
        )
    return rebuild_from(ctx, instance, upstream, requested)


# --- remaster ---------------------------------------------------------------------------------


def _position(instance: Instance) -> tuple[rp.Position, int | None]:
    try:
        in_recovery, lsn, replayed, timeline = probe.replication_position(
            instance.server.hostname, instance.port
        )
    except probe.ProbeError as exc:
        raise JobFailed(f"{where(instance)} does not answer ({exc}): nothing changed") from None
    position = rp.Position(where(instance), in_recovery, lsn_to_int(lsn) or 0, timeline)
    return position, lsn_to_int(replayed)


@operation(JobKind.REMASTER)
def remaster(ctx: JobContext) -> str:
    """1. check the new upstream: same herd, not itself, not one of its own downstreams;
    2. live: the replica is in recovery; the upstream is not behind it (timeline, LSN);
    3. ALTER SYSTEM SET primary_conninfo + reload; 4. wait until it streams from it;
    5. record the upstream on the row."""
    replica = _load(ctx.job.instance_id)
    upstream_id = ctx.job.params.get("upstream_id")
    upstream = (
        Instance.objects.select_related("server", "herd").filter(pk=upstream_id).first()
        if isinstance(upstream_id, int)
        else None
    )
    if upstream is None:
        raise JobFailed(f"{where(replica)}: the new upstream (id {upstream_id!r}) does not exist")
    if upstream.pk == replica.pk:
        raise JobFailed(f"{where(replica)} cannot stream from itself")
    if upstream.herd_id != replica.herd_id:
        raise JobFailed(f"{where(upstream)} is not in herd {replica.herd.name}")
    if upstream.fenced:
        raise JobFailed(f"{where(upstream)} is fenced: it cannot be an upstream")
    node, depth = upstream, 0
    while node is not None and depth < 32:
        if node.upstream_id == replica.pk:
            raise JobFailed(
                f"{where(upstream)} streams (directly or through others) from {where(replica)}: "
                "following it would be a replication loop"
            )
        node = _load(node.upstream_id) if node.upstream_id else None
        depth += 1
    position, replayed = _position(replica)
    if not position.in_recovery:
        raise JobFailed(f"{where(replica)} is a primary (not in recovery): nothing to remaster")
    up_position, _ = _position(upstream)
    refusal = rp.remaster_refusal(position, replayed or 0, up_position)
    ctx.note(
        "is the new upstream behind?",
        refusal
        or (
            f"{up_position.label} at {int_to_lsn(up_position.lsn)} "
            f"(timeline {up_position.timeline}); {position.label} replayed "
            f"{int_to_lsn(replayed or 0)} (timeline {position.timeline})"
        ),
    )
    if refusal:
        raise JobFailed(f"refusing to remaster {where(replica)}: {refusal}")
    current = probe.probe(replica.server.hostname, replica.port)
    conninfo = drills.conninfo_for(upstream, replica, current.primary_conninfo)
    with ctx.step(f"point it at {where(upstream)}", _hostport(replica)) as step:
        try:
            probe.set_primary_conninfo(replica.server.hostname, replica.port, conninfo)
        except probe.ProbeError as exc:
            raise JobFailed(f"{where(replica)}: could not set primary_conninfo ({exc})") from None
        step.output = f"primary_conninfo = {conninfo}"
    try:
        drills.wait_streaming(ctx, replica, upstream)
    except JobFailed as exc:
        raise JobFailed(
            f"{exc}; its primary_conninfo now names {where(upstream)}: remaster it back to "
            "its previous upstream if that one works"
        ) from None
    result, error = lifecycle.try_probe(replica)
    lifecycle.record(replica, result, error)
    Instance.objects.filter(pk=replica.pk).update(
        upstream=upstream, streams_from=upstream.address, upstream_streaming=True
    )
    return f"{where(replica)} now streams from {where(upstream)}"


# --- init -----------------------------------------------------------------------------------


def _conf_dir(instance: Instance) -> str:
    return f"/etc/postgresql/{instance.effective_pg_version}/{instance.effective_cluster_name}"


def create_cluster(ctx: JobContext, instance: Instance) -> None:
    """pg_createcluster (Debian preset; postgres may run it where /etc/postgresql/VERSION is
    its own, as on the lab) or initdb (pg_ctl preset). Skipped when already there."""
    data_dir = _check_data_dir(instance)
    if settings.COMMANDS_PRESET == "debian":
        there = ctx.ssh(
            instance.server,
            ["test", "-f", f"{_conf_dir(instance)}/postgresql.conf"],
            "is the cluster already created?",
            check=False,
        )
        if there.exit_status == 0:
            ctx.note("already created", f"{_conf_dir(instance)} exists: not created again")
            return
        ctx.ssh(
            instance.server,
            [
                "pg_createcluster",
                "--port",
                str(instance.port),
                "--datadir",
                data_dir,
                str(instance.effective_pg_version),
                instance.effective_cluster_name,
                "--",
                "--data-checksums",
            ],
            "create the cluster (pg_createcluster)",
        )
        return
    there = ctx.ssh(
        instance.server,
        ["test", "-f", f"{data_dir}/PG_VERSION"],
        "is the cluster already created?",
        check=False,
    )
    if there.exit_status == 0:
        ctx.note("already created", f"{data_dir}/PG_VERSION exists: not created again")
        return
    ctx.ssh(
        instance.server,
        [f"{drills.bindir(instance)}/initdb", "-D", data_dir, "--data-checksums"],
        "create the cluster (initdb)",
    )


def configure_instance(ctx: JobContext, instance: Instance, source: Instance | None) -> None:
    """Debian: the herd's access rules and settings copied from `source`'s configuration
    folder (pg_hba.conf, pg_ident.conf, conf.d/), then this instance's own address and port
    in conf.d/zz-elephaas-instance.conf, read last. pg_ctl preset: the configuration lives in
    the data directory (a replica gets its upstream's with the copy); address and port go
    to postgresql.auto.conf."""
    listen = f"listen_addresses = '{instance.server.hostname}'"
    port = f"port = {int(instance.port)}"
    if settings.COMMANDS_PRESET != "debian":
        ctx.ssh(
            instance.server,
            ["sh", "-c", SET_AUTO_CONF, "sh", instance.effective_data_dir, listen, port],
            "set its address and port (postgresql.auto.conf)",
        )
        return
    conf_dir = _conf_dir(instance)
    if source is not None:
        server = source.server
        ctx.ssh(
            instance.server,
            [
                "rsync",
                "-a",
                "-e",
                f"ssh -p {int(server.ssh_port)} -o BatchMode=yes",
                f"--exclude=/conf.d/{INSTANCE_CONF}",
                "--include=/pg_hba.conf",
                "--include=/pg_ident.conf",
                "--include=/conf.d/",
                "--include=/conf.d/**",
                "--exclude=*",
                f"{server.ssh_user}@{server.hostname}:{_conf_dir(source)}/",
                f"{conf_dir}/",
            ],
            f"copy the herd's configuration from {where(source)}",
        )
    ctx.ssh(
        instance.server,
        [
            "sh",
            "-c",
            WRITE_INSTANCE_CONF,
            "sh",
            conf_dir,
            listen,
            port,
            INSTANCE_CONF,
        ],
        "set its address and port (conf.d)",
    )


@operation(JobKind.INIT)
def init(ctx: JobContext) -> str:
    """Create an instance of a herd on a server; each step checks whether it is done, so a
    retry resumes.

    1. create the cluster (pg_createcluster, or initdb) unless it exists;
    2. configure it: the herd's configuration from another instance, its own address/port;
    3. a primary: start, wait until it accepts connections;
       a replica: unless it already streams, a full copy from the herd's primary
       (rebuild_from), standby configuration, start, wait until it streams."""
    instance = _load(ctx.job.instance_id)
    if instance.role not in (Role.PRIMARY, Role.REPLICA):
        raise JobFailed(f"{where(instance)}: set its role (primary or replica) before creating it")
    others = [i for i in drills.herd_instances(instance.herd) if i.pk != instance.pk]
    upstream = resolve_upstream(instance) if instance.role == Role.REPLICA else None
    primary = drills.recorded_primary(others)
    if instance.role == Role.PRIMARY and primary is not None:
        raise JobFailed(
            f"{instance.herd.name} already has a primary ({where(primary)}): a second one "
            "would take writes of its own; create this instance as a replica"
        )
    source = upstream or primary or (others[0] if others else None)
    if upstream is not None:
        receiver = None
        try:
            receiver = probe.wal_receiver(instance.server.hostname, instance.port)
        except probe.ProbeError:
            pass
        if receiver and receiver[:3] == ("streaming", upstream.server.hostname, upstream.port):
            result, error = lifecycle.try_probe(instance)
            lifecycle.record(instance, result, error)
            Instance.objects.filter(pk=instance.pk).update(
                upstream=upstream, streams_from=upstream.address, online=True
            )
            ctx.note("already streaming", f"from {where(upstream)}: nothing left to do")
            return f"{where(instance)} already exists and streams from {where(upstream)}"
        live, _error = lifecycle.try_probe(instance)
        if live is not None and not live.in_recovery:
            raise JobFailed(
                f"{where(instance)} already exists and runs as a primary: refusing to replace "
                "its data with a copy; rebuild it (with 'force') if that is what you want"
            )
    create_cluster(ctx, instance)
    ctx.progress(2)
    if instance.role == Role.PRIMARY:
        configure_instance(ctx, instance, source)
        if cluster_state(ctx, instance) != "running":
            ctx.ssh(instance.server, lifecycle.command_for("start", instance), "start")
        if cluster_state(ctx, instance) != "running":
            raise JobFailed(f"{where(instance)}: created but it does not start: see its log")
        result, error = lifecycle.try_probe(instance)
        Instance.objects.filter(pk=instance.pk).update(
            online=True, last_checked=timezone.now(), state_changed_at=timezone.now()
        )
        if result is None:
            return (
                f"{where(instance)} created and running; ElepHaaS cannot connect to it yet "
                f"({error}): create the {settings.PG_PROBE_USER} role and a pg_hba.conf line "
                "for it"
            )
        lifecycle.record(instance, result)
        return f"{where(instance)} created and running as a primary"
    configure_instance(ctx, instance, source)
    requested = ctx.job.params.get("method") or rp.PG_BASEBACKUP
    if requested == "auto":
        requested = rp.PG_BASEBACKUP
    if requested not in (rp.PG_BASEBACKUP, rp.RSYNC):
        raise JobFailed(f"a new replica is copied with pg_basebackup or rsync, not {requested!r}")
    max_rate_kb(ctx)
    summary = rebuild_from(ctx, instance, upstream, requested, fresh=True)
    return summary.replace(" rebuilt from ", " created from ", 1)
