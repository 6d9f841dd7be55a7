"""Shared replication steps: each mechanism written once, used by every operation.

Switchover, failover, rebuild, remaster, init and the instance actions all stop, start,
read a control file, rewind, write a standby configuration and wait through these
functions. Each records itself as job steps (JobContext), builds its command lines with
instances.commands and its connection strings with instances.conninfo, and raises
JobFailed with a one-line reason; the callers add what their failure leaves behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.utils import timezone

from instances import commands, conninfo, probe, waldump
from instances.choices import ClusterState, Role
from instances.controldata import ControlData, ParseError, parse_controldata
from instances.jobs.registry import JobFailed
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.wal import EndOfWal, int_to_lsn, lsn_to_int

T = TypeVar("T")

# pg_ctl / pg_ctlcluster status: 0 running, 3 not running, 4 no cluster in the directory.
STATUS_RUNNING, STATUS_STOPPED, STATUS_NO_CLUSTER = 0, 3, 4


# --- commands and facts -------------------------------------------------------------------


def bindir(instance: Instance) -> str:
    return settings.PG_BINDIR.replace("{version}", str(instance.effective_pg_version))


def command_for(action: str, instance: Instance, **extra: object) -> list[str]:
    """The argv of an instance action (start, stop, status…) from the COMMANDS presets."""
    templates = commands.command_templates(settings.COMMANDS_PRESET, settings.COMMANDS)
    if action not in templates:
        raise JobFailed(f"no command template for {action!r} in the COMMANDS setting")
    values = {
        "version": instance.effective_pg_version,
        "cluster": instance.effective_cluster_name,
        "data_dir": instance.effective_data_dir,
        "port": instance.port,
        "bindir": bindir(instance),
        "timeout": int(settings.ACTION_WAIT),
        "mode": "fast",
        **extra,
    }
    try:
        return commands.build(templates[action], values)
    except commands.CommandTemplateError as exc:
        raise JobFailed(f"COMMANDS setting: {exc}") from None


def start_conf(instance: Instance) -> str | None:
    """Debian's start.conf of the cluster (auto / manual / disabled), or None where the
    pg_ctl preset manages the instance and there is none."""
    if settings.COMMANDS_PRESET != "debian" or not instance.herd.cluster_name:
        return None
    return (
        f"/etc/postgresql/{instance.effective_pg_version}/"
        f"{instance.effective_cluster_name}/start.conf"
    )


def conninfo_for(upstream: Instance, replica: Instance, template: str = "") -> str:
    """primary_conninfo for `replica` streaming from `upstream` (no password: .pgpass)."""
    return conninfo.primary_conninfo(
        host=upstream.server.hostname,
        port=upstream.port,
        user=settings.REPLICATION_USER,
        application=conninfo.application_name(replica.herd.name, replica.server.hostname),
        template=template,
    )


def try_probe(instance: Instance) -> tuple[probe.ProbeResult | None, str]:
    try:
        return probe.probe(instance.server.hostname, instance.port), ""
    except probe.ProbeError as exc:
        return None, str(exc)


def record(instance: Instance, result: probe.ProbeResult | None, error: str = "") -> None:
    """Write what was just checked on the instance row; nothing else."""
    now = timezone.now()
    online = result is not None
    role = instance.role
    if result is not None:
        role = Role.REPLICA if result.in_recovery else Role.PRIMARY
    fields = {"online": online, "last_checked": now, "last_error": error[:500]}
    if online != instance.online or role != instance.role:
        fields["state_changed_at"] = now
    fields["role"] = role
    if result is not None:
        fields.update(
            last_lsn=result.lsn,
            receive_lsn=result.receive_lsn or "",
            replay_lsn=result.replay_lsn or "",
            pending_restart=(result.pending_restart or "")[:500],
        )
        if result.timeline is not None:
            # A promotion's new timeline shows at once, not at the next health sweep.
            fields["timeline"] = result.timeline
        if fields["pending_restart"] != instance.pending_restart:
            # A restart applied (or a change now waits for) settings: gather them at the
            # next round rather than show the old ones for SETTINGS_INTERVAL.
            fields["settings_seen_at"] = None
        if role == Role.PRIMARY:
            fields.update(
                upstream=None,
                streams_from="",
                lag_bytes=None,
                lag_seconds=None,
                upstream_streaming=None,
            )
    for name, value in fields.items():
        setattr(instance, name, value)
    Instance.objects.filter(pk=instance.pk).update(**fields)


# --- waiting --------------------------------------------------------------------------------


def wait_until(
    ctx: JobContext,
    instance: Instance,
    name: str,
    check: Callable[[], tuple[T | None, str]],
    *,
    interval: float = 0.2,
    timeout: float | None = None,
    failure: Callable[[str], str],
) -> T:
    """The one wait loop: call `check` until it returns a value, as one recorded step.

    `check` returns (value, detail): a value ends the wait and becomes the step's output
    (with the time it took); None goes on. After `timeout` (ACTION_WAIT) seconds the job
    fails with `failure(last detail)`. A cancel is honoured between two checks.
    """
    limit = settings.ACTION_WAIT if timeout is None else timeout
    started = time.monotonic()
    with ctx.step(name, instance.address) as step:
        while True:
            ctx.check_cancel()
            value, detail = check()
            if value is not None:
                step.output = f"{detail} after {time.monotonic() - started:.2f} s".lstrip()
                return value
            if time.monotonic() - started > limit:
                raise JobFailed(failure(detail))
            time.sleep(interval)


def wait_for(
    ctx: JobContext,
    instance: Instance,
    what: str,
    done: Callable[[probe.ProbeResult | None, str], bool],
) -> probe.ProbeResult | None:
    """Probe until done(result, error); returns the last result (None: it stopped)."""

    def check():
        result, error = try_probe(instance)
        if not done(result, error):
            return None, error or "answering"
        if result is None:
            return (False,), what
        return (result,), f"{what}; in recovery: {result.in_recovery}, LSN {result.lsn}"

    found = wait_until(
        ctx,
        instance,
        f"wait until {what}",
        check,
        failure=lambda detail: (
            f"{instance.label}: not {what} after {settings.ACTION_WAIT:.0f} s "
            f"(last check: {detail}); see the server log"
        ),
    )
    return found[0] or None


def wait_writable(ctx: JobContext, instance: Instance) -> str:
    """Until a write transaction commits on it; returns its WAL position then."""

    def check():
        try:
            lsn = probe.check_writable(instance.server.hostname, instance.port)
        except probe.ProbeError as exc:
            return None, str(exc)
        return lsn, f"wrote a transaction; WAL at {lsn}"

    return wait_until(
        ctx,
        instance,
        "check it accepts writes",
        check,
        interval=0.05,
        failure=lambda detail: f"{instance.label} was promoted but does not accept writes: "
        f"{detail}",
    )


def wait_streaming(ctx: JobContext, replica: Instance, upstream: Instance) -> None:
    """Until its WAL receiver streams from `upstream`'s address."""

    def check():
        try:
            receiver = probe.wal_receiver(replica.server.hostname, replica.port)
        except probe.ProbeError:
            receiver = None
        if receiver and receiver[:3] == ("streaming", upstream.server.hostname, upstream.port):
            return True, "streaming"
        return None, f"receiver: {receiver}"

    wait_until(
        ctx,
        replica,
        f"wait until {replica.label} streams from {upstream.label}",
        check,
        interval=0.1,
        failure=lambda detail: (
            f"{replica.label} is not streaming from {upstream.label} after "
            f"{settings.ACTION_WAIT:.0f} s ({detail}); check its log"
        ),
    )


def wait_replayed(
    ctx: JobContext,
    instance: Instance,
    lsn: int,
    *,
    inclusive: bool = False,
    timeout: float | None = None,
) -> None:
    """Until it has replayed past `lsn` (a switchover: the old primary's final checkpoint),
    or up to it (`inclusive`: a salvage, up to the old primary's end of WAL)."""
    limit = settings.ACTION_WAIT if timeout is None else timeout

    def check():
        result, error = try_probe(instance)
        replayed = lsn_to_int(result.replay_lsn) if result else None
        if replayed is not None and (replayed >= lsn if inclusive else replayed > lsn):
            return True, f"replayed {result.replay_lsn}"
        return None, (result.replay_lsn if result else None) or error or "no answer"

    wait_until(
        ctx,
        instance,
        f"wait until {instance.label} replayed {int_to_lsn(lsn)}",
        check,
        interval=0.02,
        timeout=limit,
        failure=lambda detail: (
            f"{instance.label} did not replay the old primary's "
            f"{'end of WAL' if inclusive else 'final checkpoint'} "
            f"{int_to_lsn(lsn)} within {limit:.0f} s (at {detail})"
        ),
    )


# --- status, stop, start ------------------------------------------------------------------


def cluster_state(ctx: JobContext, instance: Instance) -> ClusterState:
    """Ask the server's status command, not the network: a probe can fail while it runs."""
    status = ctx.ssh(instance.server, command_for("status", instance), "check status", check=False)
    if status.exit_status == STATUS_RUNNING:
        return ClusterState.RUNNING
    if status.exit_status == STATUS_STOPPED:
        return ClusterState.STOPPED
    if status.exit_status == STATUS_NO_CLUSTER:
        return ClusterState.EMPTY
    exists = ctx.ssh(
        instance.server,
        ["test", "-d", instance.effective_data_dir],
        "does the data directory exist?",
        check=False,
    )
    if exists.exit_status == 1:
        return ClusterState.EMPTY
    detail = (status.stderr or status.stdout).strip().splitlines()
    raise JobFailed(
        f"{instance.label}: status check failed (exit {status.exit_status}: "
        f"{detail[-1] if detail else 'no output'}); is the cluster configured on this server?"
    )


def ensure_stopped(ctx: JobContext, instance: Instance, why: str) -> ClusterState:
    """Stop it (fast) unless it is stopped already; checked with the status command."""
    state = cluster_state(ctx, instance)
    if state == ClusterState.RUNNING:
        try:
            ctx.ssh(
                instance.server,
                command_for("stop", instance, mode="fast"),
                f"stop it (fast) {why}",
            )
        except JobFailed as exc:
            raise JobFailed(
                f"could not stop {instance.label} ({exc}); nothing was changed: stop it by "
                "hand, then retry"
            ) from None
        state = cluster_state(ctx, instance)
        if state == ClusterState.RUNNING:
            raise JobFailed(
                f"{instance.label}: still running after the stop command; nothing was "
                "changed: stop it by hand, then retry"
            )
    return state


def start(ctx: JobContext, instance: Instance, name: str = "start") -> None:
    ctx.ssh(instance.server, command_for("start", instance), name)


# --- fencing ------------------------------------------------------------------------------


def postmaster_is_zombie(ctx: JobContext, instance: Instance) -> bool:
    """The status command says running, but its postmaster was killed and not yet reaped:
    nothing runs, nothing writes."""
    result = ctx.ssh(
        instance.server,
        commands.postmaster_zombie(instance.effective_data_dir),
        "is its postmaster a zombie? (killed, not reaped)",
        check=False,
    )
    return result.stdout.startswith("zombie ")


def fence_marker(instance: Instance) -> str:
    return f"{instance.effective_data_dir.rstrip('/')}.elephaas-fenced"


def refuse_if_fenced_on_disk(ctx: JobContext, instance: Instance, action: str) -> None:
    """The fence marker beside its data directory holds even when the inventory's flag was
    cleared by hand (and for the pg_ctl preset, which has no start.conf)."""
    found = ctx.ssh(
        instance.server,
        ["cat", fence_marker(instance)],
        "is it fenced on its server? (fence marker)",
        check=False,
    )
    if found.exit_status == 0:
        raise JobFailed(
            f"{instance.label} is fenced on its server ({found.stdout.strip()}, "
            f"{fence_marker(instance)}): refusing to {action} it; rebuild it as a replica, "
            "which lifts the fence"
        )


def ssh_unless_fenced(
    ctx: JobContext, instance: Instance, argv: list[str], name: str, action: str
) -> None:
    """Run an action's command on the instance's server unless the fence marker is beside
    its data directory (refuse_if_fenced_on_disk and the command in one: nothing can fence
    it in between, and it costs one command)."""
    try:
        ctx.ssh(instance.server, commands.unless_fenced(fence_marker(instance), argv), name)
    except JobFailed as exc:
        cause = exc.__cause__
        said = getattr(cause, "stderr_tail", "") or ""
        if getattr(cause, "exit_status", None) != commands.FENCED_EXIT or (
            commands.FENCED_SAYS not in said
        ):
            raise
        found = said.split(commands.FENCED_SAYS, 1)[1].strip().splitlines()[0]
        raise JobFailed(
            f"{instance.label} is fenced on its server ({found}): refusing to {action} it; "
            "rebuild it as a replica, which lifts the fence"
        ) from None


def fence_on_server(ctx: JobContext, instance: Instance) -> ClusterState:
    """Stop it (immediate) if it runs, keep it from starting (fence marker, start.conf
    manual) and record the fence as confirmed. Returns the state it was found in. Raises
    JobFailed when its server does not answer (nothing confirmed)."""
    state = cluster_state(ctx, instance)
    if state == ClusterState.RUNNING and postmaster_is_zombie(ctx, instance):
        state = ClusterState.STOPPED
    if state == ClusterState.RUNNING:
        probe.forget_kept(instance.server.hostname, instance.port)
        ctx.ssh(
            instance.server,
            command_for("stop", instance, mode="immediate"),
            "stop it (immediate)",
        )
        if cluster_state(ctx, instance) == ClusterState.RUNNING:
            raise JobFailed(f"{instance.label} still runs after an immediate stop")
    ctx.ssh(
        instance.server,
        commands.fence(fence_marker(instance), ctx.job.pk, start_conf(instance)),
        "keep it from starting (fence marker; start.conf: manual)",
    )
    now = timezone.now()
    Instance.objects.filter(pk=instance.pk).update(
        fenced=True, online=False, fence_confirmed_at=now, state_changed_at=now
    )
    return state


def fencing_command(ctx: JobContext, instance: Instance) -> str:
    """Its server does not answer: the environment's fencing command (STONITH: power it off
    through IPMI or a cloud API), from FENCE_COMMANDS. Returns what happened, in words."""
    environment = instance.server.environment.name
    template = settings.FENCE_COMMANDS.get(environment) or settings.FENCE_COMMANDS.get("*")
    if not template:
        return f"no fencing command is configured for environment {environment}"
    try:
        argv = commands.build(
            template,
            {
                "hostname": instance.server.hostname,
                "port": instance.port,
                "herd": instance.herd.name,
                "environment": environment,
                "instance": instance.label,
            },
        )
    except commands.CommandTemplateError as exc:
        return f"the fencing command for {environment} is wrong: {exc}"
    status, output = ctx.local(
        argv, f"fencing command for {instance.server.hostname}", timeout=settings.FENCE_TIMEOUT
    )
    last = output.strip().splitlines()[-1] if output.strip() else "no output"
    if status == 0:
        return f"fencing command succeeded ({last})"
    return f"fencing command FAILED (exit {status}: {last})"


# --- the control file ---------------------------------------------------------------------


def read_controldata(
    ctx: JobContext, instance: Instance, *, urgent: bool = False
) -> tuple[ControlData | None, str]:
    """pg_controldata of its data directory; (None, why) when it cannot be read."""
    result = ctx.ssh(
        instance.server,
        commands.pg_controldata(bindir(instance), instance.effective_data_dir),
        "read its control file (pg_controldata)",
        check=False,
        urgent=urgent,
    )
    if result.exit_status != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"exit status {result.exit_status}"
    try:
        return parse_controldata(result.stdout), ""
    except ParseError as exc:
        return None, str(exc)


def stop_and_read_checkpoint(ctx: JobContext, primary: Instance) -> int:
    """1. stop the primary (fast: a shutdown checkpoint, all WAL sent to the replicas);
    2. read that final checkpoint from its control file; refuse if it did not shut down
    cleanly. Returns the checkpoint's LSN."""
    ctx.ssh(
        primary.server,
        command_for("stop", primary, mode="fast"),
        "stop the primary (fast: shutdown checkpoint, WAL sent to replicas)",
        urgent=True,
    )
    Instance.objects.filter(pk=primary.pk).update(online=False, state_changed_at=timezone.now())
    control, error = read_controldata(ctx, primary, urgent=True)
    if control is None:
        raise JobFailed(f"{primary.label}: cannot read its control file ({error})")
    if not control.shut_down_cleanly:
        raise JobFailed(
            f"{primary.label} did not shut down cleanly (cluster state: {control.state})"
        )
    if control.checkpoint_lsn is None:
        raise JobFailed(f"{primary.label}: no checkpoint location in pg_controldata")
    return control.checkpoint_lsn


def read_end_of_wal(ctx: JobContext, instance: Instance) -> tuple[EndOfWal | None, str]:
    """Where a stopped (crashed, killed) cluster's WAL really ends, read from its data
    directory over SSH: its status, pg_controldata's REDO point, then pg_waldump from there
    to the first invalid record. (None, why) when it cannot be known: its server does not
    answer, PostgreSQL still runs there, or pg_waldump stopped for a reason not understood.
    """
    try:
        state = cluster_state(ctx, instance)
    except JobFailed as exc:
        return None, f"its server does not answer over SSH ({exc})"
    if state == ClusterState.RUNNING and not postmaster_is_zombie(ctx, instance):
        return None, "its PostgreSQL still runs (without answering SQL): its WAL may still grow"
    if state == ClusterState.EMPTY:
        return None, "there is no cluster in its data directory"
    control, error = read_controldata(ctx, instance)
    if control is None or control.redo_lsn is None or control.timeline is None:
        return None, f"its control file cannot be read ({error or 'no REDO point'})"
    result = ctx.ssh(
        instance.server,
        commands.pg_waldump_to_end(
            bindir(instance),
            instance.effective_data_dir,
            int_to_lsn(control.redo_lsn),
            control.timeline,
        ),
        "read where its WAL ends (pg_waldump from the last REDO point)",
        check=False,
    )
    end = waldump.end_of_wal(result.stderr, control.segment_size)
    if end is None:
        said = (result.stderr or result.stdout).strip().splitlines()
        return (
            None,
            f"pg_waldump did not say where its WAL ends ({said[-1] if said else 'no output'})",
        )
    return (
        EndOfWal(end, control.timeline, control.segment_size),
        f"its WAL ends at {int_to_lsn(end)} (cluster state: {control.state})",
    )


def salvage_wal(
    ctx: JobContext, source: Instance, target: Instance, end: EndOfWal, start: int
) -> int:
    """Bring the WAL a replica lacks from a stopped old primary's pg_wal into its own, and
    wait until it has replayed it all: the old primary's end of WAL (`end`, read by
    read_end_of_wal) becomes the replica's. Returns the bytes salvaged. Raises JobFailed
    with why it is impossible (a segment recycled or unreadable, the copy failed, replay
    stopped short); nothing is promoted here, so the caller can still refuse.

    The copy runs on the replica's server over the servers' own SSH trust (rsync writes
    each file aside and renames it, so replay never reads a half-copied segment, even the
    one its WAL receiver was filling); a reload then wakes its startup process at once
    instead of after wal_retrieve_retry_interval.
    """
    names = end.segments_from(start)
    if not names:
        return 0
    wal_dir = f"{source.effective_data_dir}/pg_wal"
    listing = ctx.ssh(
        source.server,
        ["ls", "-1", wal_dir],
        f"list the old primary's pg_wal ({len(names)} segments needed)",
    )
    present = set(listing.stdout.split())
    missing = [n for n in names if n not in present]
    if missing:
        raise JobFailed(
            f"segment {missing[0]} is no longer in {source.label}'s pg_wal (recycled or removed)"
        )
    rsync = commands.rsync_wal(
        commands.ssh_transport(source.server.ssh_port),
        commands.remote_path(source.server.ssh_user, source.server.hostname, wal_dir),
        names,
        f"{target.effective_data_dir}/pg_wal",
    )
    result = ctx.ssh(
        target.server,
        rsync,
        f"copy {len(names)} WAL segments from {source.label} (salvage)",
        check=False,
        timeout=settings.SALVAGE_WAIT,
    )
    if result.exit_status != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise JobFailed(
            f"copying the WAL from {source.label} failed (rsync exit {result.exit_status}: "
            f"{said[-1] if said else 'no output'})"
        )
    with ctx.step(f"wake {target.label}'s WAL replay (reload)", target.address) as step:
        try:
            probe.reload(target.server.hostname, target.port)
        except probe.ProbeError as exc:
            raise JobFailed(f"{target.label} stopped answering ({exc})") from None
        step.output = "reloaded"
    wait_replayed(ctx, target, end.lsn, inclusive=True, timeout=settings.SALVAGE_WAIT)
    return end.lsn - start


# --- rewind and standby configuration -----------------------------------------------------


def checkpoint_rewind_source(ctx: JobContext, source: Instance, target: Instance) -> None:
    """CHECKPOINT the source of a pg_rewind first. Raises JobFailed."""
    # pg_rewind reads the source's timeline from its control file, which a promoted server
    # updates only at its first checkpoint: without one it would see the old timeline and
    # rewind to the wrong common ancestor.
    with ctx.step(
        f"checkpoint {source.label} (its control file then shows its timeline for pg_rewind)",
        source.address,
    ):
        try:
            probe.checkpoint(source.server.hostname, source.port)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{source.label}: CHECKPOINT failed ({exc}); {target.label} is stopped, its "
                "data untouched"
            ) from None


def rewind(ctx: JobContext, target: Instance, source: Instance, *, timeout: float) -> None:
    """pg_rewind `target` (stopped) onto `source` (running, checkpointed by
    checkpoint_rewind_source). Raises JobFailed."""
    source_conninfo = conninfo.source_conninfo(
        host=source.server.hostname,
        port=source.port,
        user=settings.PG_PROBE_USER,
        dbname=settings.PG_PROBE_DATABASE,
    )
    ctx.ssh(
        target.server,
        commands.pg_rewind(bindir(target), target.effective_data_dir, source_conninfo),
        f"pg_rewind onto {source.label}",
        timeout=timeout,
    )


def write_standby_config(
    ctx: JobContext, instance: Instance, upstream: Instance, template: str = ""
) -> str:
    """standby.signal and primary_conninfo in postgresql.auto.conf (it is stopped)."""
    value = conninfo_for(upstream, instance, template)
    ctx.ssh(
        instance.server,
        commands.write_standby_config(
            instance.effective_data_dir, conninfo.config_line("primary_conninfo", value)
        ),
        f"configure as a standby of {upstream.label}",
    )
    return value


def set_upstream(ctx: JobContext, replica: Instance, upstream: Instance) -> str:
    """A running replica: ALTER SYSTEM SET primary_conninfo (keeping its other options) and
    a reload; the WAL receiver restarts towards the new upstream. Raises ProbeError."""
    with ctx.step(f"point {replica.label} at {upstream.label}", replica.address) as step:
        current = probe.probe(replica.server.hostname, replica.port)
        value = conninfo_for(upstream, replica, current.primary_conninfo)
        probe.set_primary_conninfo(replica.server.hostname, replica.port, value)
        step.output = f"primary_conninfo = {value}"
    return value
