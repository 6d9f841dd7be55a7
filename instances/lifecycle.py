"""Instance actions: start, stop, restart, reload, promote.

Each is idempotent like the original ElepHaaS (starting a running instance succeeds and
says so), runs its command from the COMMANDS templates over SSH, then confirms the result
against PostgreSQL itself before it records anything on the instance row.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.utils import timezone

from instances import commands, probe
from instances.choices import Role
from instances.jobs import JobContext, JobFailed, operation
from instances.models import Instance, JobKind

# pg_ctl and pg_ctlcluster status: 3 means "not running".
STATUS_NOT_RUNNING = 3


def command_for(action: str, instance: Instance, **extra: object) -> list[str]:
    templates = commands.command_templates(settings.COMMANDS_PRESET, settings.COMMANDS)
    if action not in templates:
        raise JobFailed(f"no command template for {action!r} in the COMMANDS setting")
    version = instance.effective_pg_version
    values = {
        "version": version,
        "cluster": instance.effective_cluster_name,
        "data_dir": instance.effective_data_dir,
        "port": instance.port,
        "bindir": settings.PG_BINDIR.replace("{version}", str(version)),
        "timeout": int(settings.ACTION_WAIT),
        "mode": "fast",
        **extra,
    }
    try:
        return commands.build(templates[action], values)
    except commands.CommandTemplateError as exc:
        raise JobFailed(f"COMMANDS setting: {exc}") from None


def where(instance: Instance) -> str:
    return f"{instance.herd.name} on {instance.server.hostname}:{instance.port}"


def try_probe(instance: Instance) -> tuple[probe.ProbeResult | None, str]:
    try:
        return probe.probe(instance.server.hostname, instance.port), ""
    except probe.ProbeError as exc:
        return None, str(exc)


def record(instance: Instance, result: probe.ProbeResult | None, error: str = "") -> None:
    """Write what was just checked; nothing else."""
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
        )
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


def wait_for(ctx: JobContext, instance: Instance, what: str, done) -> probe.ProbeResult | None:
    """Probe until done(result, error) is true, for at most ACTION_WAIT seconds."""
    started = time.monotonic()
    with ctx.step(f"wait until {what}", f"{instance.server.hostname}:{instance.port}") as step:
        while True:
            ctx.check_cancel()
            result, error = try_probe(instance)
            if done(result, error):
                step.output = f"{what} after {time.monotonic() - started:.1f} s" + (
                    f"; in recovery: {result.in_recovery}, LSN {result.lsn}" if result else ""
                )
                return result
            if time.monotonic() - started > settings.ACTION_WAIT:
                raise JobFailed(
                    f"{where(instance)}: not {what} after {settings.ACTION_WAIT:.0f} s "
                    f"(last check: {error or 'answering'}); see the server log"
                )
            time.sleep(0.2)


def refuse_if_fenced(instance: Instance, action: str) -> None:
    if instance.fenced:
        raise JobFailed(
            f"{where(instance)} is fenced (an old primary after a failover): refusing to "
            f"{action} it; rebuild it as a replica first, or clear the flag if you are sure"
        )


def is_running(ctx: JobContext, instance: Instance) -> bool:
    """Ask the server, not just the network: a probe can fail while Postgres runs."""
    status = ctx.ssh(instance.server, command_for("status", instance), "check status", check=False)
    if status.exit_status == 0:
        return True
    if status.exit_status == STATUS_NOT_RUNNING:
        return False
    detail = (status.stderr or status.stdout).strip().splitlines()
    raise JobFailed(
        f"{where(instance)}: status check failed (exit {status.exit_status}: "
        f"{detail[-1] if detail else 'no output'}); was the cluster removed? run discovery"
    )


def _role_word(result: probe.ProbeResult) -> str:
    return "a replica (in recovery)" if result.in_recovery else "a primary"


@operation(JobKind.START)
def start(ctx: JobContext) -> str:
    instance = ctx.job.instance
    refuse_if_fenced(instance, "start")
    result, _error = try_probe(instance)
    if result is not None:
        record(instance, result)
        ctx.note("already running", f"accepting connections as {_role_word(result)}")
        return f"{where(instance)} was already running, as {_role_word(result)}: nothing to do"
    ctx.ssh(instance.server, command_for("start", instance), "start")
    result = wait_for(ctx, instance, "accepting connections", lambda r, e: r is not None)
    record(instance, result)
    return f"{where(instance)} started: accepting connections as {_role_word(result)}"


@operation(JobKind.STOP)
def stop(ctx: JobContext) -> str:
    instance = ctx.job.instance
    mode = ctx.job.params.get("mode", "fast")
    if mode not in commands.STOP_MODES:
        raise JobFailed(f"stop mode {mode!r} is not one of {', '.join(commands.STOP_MODES)}")
    if not is_running(ctx, instance):
        record(instance, None, "stopped")
        return f"{where(instance)} was already stopped: nothing to do"
    if mode == "smart":
        # A smart stop waits for every client to leave, ElepHaaS's own kept health
        # connections included: end those first.
        with ctx.step(
            "end ElepHaaS's own monitoring sessions", f"{instance.server.hostname}:{instance.port}"
        ) as step:
            try:
                step.output = (
                    f"{probe.end_kept_sessions(instance.server.hostname, instance.port)} ended"
                )
            except probe.ProbeError as exc:
                step.output = f"not answering ({exc}); nothing to end"
    ctx.ssh(instance.server, command_for("stop", instance, mode=mode), f"stop ({mode})")
    if is_running(ctx, instance):
        raise JobFailed(f"{where(instance)}: the stop command succeeded but it still runs")
    wait_for(ctx, instance, "refusing connections", lambda r, e: r is None)
    record(instance, None, "stopped")
    return f"{where(instance)} stopped ({mode})"


@operation(JobKind.RESTART)
def restart(ctx: JobContext) -> str:
    instance = ctx.job.instance
    refuse_if_fenced(instance, "restart")
    mode = ctx.job.params.get("mode", "fast")
    if mode not in commands.STOP_MODES:
        raise JobFailed(f"stop mode {mode!r} is not one of {', '.join(commands.STOP_MODES)}")
    ctx.ssh(instance.server, command_for("restart", instance, mode=mode), f"restart ({mode})")
    result = wait_for(ctx, instance, "accepting connections", lambda r, e: r is not None)
    record(instance, result)
    return f"{where(instance)} restarted: accepting connections as {_role_word(result)}"


@operation(JobKind.RELOAD)
def reload(ctx: JobContext) -> str:
    instance = ctx.job.instance
    try:
        before = probe.conf_load_time(instance.server.hostname, instance.port)
    except probe.ProbeError as exc:
        record(instance, None, str(exc))
        raise JobFailed(
            f"{where(instance)} is not answering ({exc}): nothing to reload; start it instead"
        ) from None
    ctx.note("configuration loaded at", before)
    ctx.ssh(instance.server, command_for("reload", instance), "reload")
    started = time.monotonic()
    with ctx.step(
        "wait until the configuration is reloaded", f"{instance.server.hostname}:{instance.port}"
    ) as step:
        while True:
            ctx.check_cancel()
            after = probe.conf_load_time(instance.server.hostname, instance.port)
            if after != before:
                step.output = f"reloaded at {after}"
                break
            if time.monotonic() - started > settings.ACTION_WAIT:
                raise JobFailed(
                    f"{where(instance)}: configuration not reloaded after "
                    f"{settings.ACTION_WAIT:.0f} s"
                )
            time.sleep(0.1)
    result, error = try_probe(instance)
    record(instance, result, error)
    return f"{where(instance)} reloaded its configuration (loaded at {after})"


@operation(JobKind.PROMOTE)
def promote(ctx: JobContext) -> str:
    """1. check it is a replica (a primary: nothing to do);
    2. unless the DBA accepted two primaries, check every other instance of the herd
       recorded as primary is really down (asked live, not from the inventory);
    3. promote; 4. wait until it leaves recovery; 5. record it as primary, no upstream."""
    instance = ctx.job.instance
    refuse_if_fenced(instance, "promote")
    result, error = try_probe(instance)
    if result is None:
        record(instance, None, error)
        raise JobFailed(f"{where(instance)} is not answering ({error}): start it first")
    if not result.in_recovery:
        record(instance, result)
        return f"{where(instance)} is already a primary: nothing to do"
    others = (
        Instance.objects.select_related("server", "herd")
        .filter(herd=instance.herd, role=Role.PRIMARY)
        .exclude(pk=instance.pk)
    )
    for other in others:
        live, _ = try_probe(other)
        if live is not None and not live.in_recovery:
            if not ctx.job.params.get("allow_two_primaries"):
                raise JobFailed(
                    f"{where(other)} is still up as primary: promoting {where(instance)} "
                    "would make two primaries; stop it first, use a switchover, or tick "
                    "'I accept two primaries' on the confirmation page"
                )
            ctx.note(
                "two primaries accepted",
                f"{where(other)} is still a primary; the DBA ticked 'I accept two primaries'",
            )
    ctx.ssh(instance.server, command_for("promote", instance), "promote")
    result = wait_for(
        ctx, instance, "out of recovery", lambda r, e: r is not None and not r.in_recovery
    )
    record(instance, result)
    return f"{where(instance)} promoted: now a primary at LSN {result.lsn}"
