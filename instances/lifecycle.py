"""Instance actions: start, stop, restart, reload, promote.

Each is idempotent like the original ElepHaaS (starting a running instance succeeds and
says so), runs its command from the COMMANDS templates over SSH, then confirms the result
against PostgreSQL itself before it records anything on the instance row.
"""

from __future__ import annotations

from django.conf import settings

from instances import commands, probe, steps
from instances.choices import ClusterState, JobKind, Role
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.steps import cluster_state, command_for, record, try_probe, wait_for, wait_until


def refuse_if_unsafe(
    ctx: JobContext, instance: Instance, action: str, *, on_disk: bool = True
) -> None:
    """Refused: a rebuild has not finished, or it is fenced, in the inventory or on its
    server (the fence marker a failover left there; `on_disk=False` when the action's own
    command checks the marker: steps.ssh_unless_fenced)."""
    if instance.rebuild_job is not None:
        raise JobFailed(f"refusing to {action} it: {instance.unfinished_rebuild}")
    if instance.fenced:
        raise JobFailed(
            f"{instance.label} is fenced (an old primary after a failover): refusing to "
            f"{action} it; rebuild it as a replica first, or clear the flag if you are sure"
        )
    if on_disk:
        steps.refuse_if_fenced_on_disk(ctx, instance, action)


def is_running(ctx: JobContext, instance: Instance) -> bool:
    """Ask the server, not just the network: a probe can fail while Postgres runs."""
    state = cluster_state(ctx, instance)
    if state == ClusterState.EMPTY:
        raise JobFailed(
            f"{instance.label}: no cluster in its data directory {instance.effective_data_dir}; "
            "was the cluster removed? run discovery"
        )
    return state == ClusterState.RUNNING


def _role_word(result: probe.ProbeResult) -> str:
    return "a replica (in recovery)" if result.in_recovery else "a primary"


@operation(JobKind.START)
def start(ctx: JobContext) -> str:
    instance = ctx.job.instance
    refuse_if_unsafe(ctx, instance, "start")
    result, _error = try_probe(instance)
    if result is not None:
        record(instance, result)
        ctx.note("already running", f"accepting connections as {_role_word(result)}")
        return f"{instance.label} was already running, as {_role_word(result)}: nothing to do"
    ctx.ssh(instance.server, command_for("start", instance), "start")
    result = wait_for(ctx, instance, "accepting connections", lambda r, e: r is not None)
    record(instance, result)
    return f"{instance.label} started: accepting connections as {_role_word(result)}"


def end_own_sessions(ctx: JobContext, instance: Instance) -> None:
    """A smart stop (or restart) waits for every client to leave, ElepHaaS's own kept
    health connections included: end those first. Once the shutdown has begun, the
    postmaster refuses the next sweep's reconnection, so they cannot come back."""
    with ctx.step(
        "end ElepHaaS's own monitoring sessions", f"{instance.server.hostname}:{instance.port}"
    ) as step:
        try:
            step.output = (
                f"{probe.end_kept_sessions(instance.server.hostname, instance.port)} ended"
            )
        except probe.ProbeError as exc:
            step.output = f"not answering ({exc}); nothing to end"


@operation(JobKind.STOP)
def stop(ctx: JobContext) -> str:
    instance = ctx.job.instance
    mode = ctx.job.params.get("mode", "fast")
    if mode not in commands.STOP_MODES:
        raise JobFailed(f"stop mode {mode!r} is not one of {', '.join(commands.STOP_MODES)}")
    if instance.fenced:
        # A fenced instance stays down: stopped at once, and kept from starting again.
        steps.fence_on_server(ctx, instance)
        record(instance, None, "stopped")
        return f"{instance.label} is fenced: stopped and kept from starting (fence marker)"
    if not is_running(ctx, instance):
        record(instance, None, "stopped")
        return f"{instance.label} was already stopped: nothing to do"
    if mode == "smart":
        end_own_sessions(ctx, instance)
    ctx.ssh(instance.server, command_for("stop", instance, mode=mode), f"stop ({mode})")
    if is_running(ctx, instance):
        raise JobFailed(f"{instance.label}: the stop command succeeded but it still runs")
    wait_for(ctx, instance, "refusing connections", lambda r, e: r is None)
    record(instance, None, "stopped")
    return f"{instance.label} stopped ({mode})"


@operation(JobKind.RESTART)
def restart(ctx: JobContext) -> str:
    instance = ctx.job.instance
    refuse_if_unsafe(ctx, instance, "restart", on_disk=False)
    mode = ctx.job.params.get("mode", "fast")
    if mode not in commands.STOP_MODES:
        raise JobFailed(f"stop mode {mode!r} is not one of {', '.join(commands.STOP_MODES)}")
    if mode == "smart":
        end_own_sessions(ctx, instance)
    # The fence marker is checked by the restart command itself (one command, no gap).
    steps.ssh_unless_fenced(
        ctx, instance, command_for("restart", instance, mode=mode), f"restart ({mode})", "restart"
    )
    result = wait_for(ctx, instance, "accepting connections", lambda r, e: r is not None)
    record(instance, result)
    return f"{instance.label} restarted: accepting connections as {_role_word(result)}"


@operation(JobKind.RELOAD)
def reload(ctx: JobContext) -> str:
    instance = ctx.job.instance
    try:
        before = probe.conf_load_time(instance.server.hostname, instance.port)
    except probe.ProbeError as exc:
        record(instance, None, str(exc))
        raise JobFailed(
            f"{instance.label} is not answering ({exc}): nothing to reload; start it instead"
        ) from None
    ctx.note("configuration loaded at", before)
    ctx.ssh(instance.server, command_for("reload", instance), "reload")

    def reloaded():
        try:
            after = probe.conf_load_time(instance.server.hostname, instance.port)
        except probe.ProbeError as exc:
            return None, str(exc)
        return (after, f"reloaded at {after}") if after != before else (None, "not yet")

    after = wait_until(
        ctx,
        instance,
        "wait until the configuration is reloaded",
        reloaded,
        interval=0.1,
        failure=lambda detail: f"{instance.label}: configuration not reloaded after "
        f"{settings.ACTION_WAIT:.0f} s ({detail})",
    )
    result, error = try_probe(instance)
    record(instance, result, error)
    return f"{instance.label} reloaded its configuration (loaded at {after})"


@operation(JobKind.PROMOTE)
def promote(ctx: JobContext) -> str:
    """1. check it is a replica (a primary: nothing to do);
    2. unless the DBA accepted two primaries, check every other instance of the herd
       recorded as primary is really down (asked live, not from the inventory);
    3. promote; 4. wait until it leaves recovery; 5. record it as primary, no upstream."""
    instance = ctx.job.instance
    refuse_if_unsafe(ctx, instance, "promote")
    result, error = try_probe(instance)
    if result is None:
        record(instance, None, error)
        raise JobFailed(f"{instance.label} is not answering ({error}): start it first")
    if not result.in_recovery:
        record(instance, result)
        return f"{instance.label} is already a primary: nothing to do"
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
                    f"{other.label} is still up as primary: promoting {instance.label} "
                    "would make two primaries; stop it first, use a switchover, or tick "
                    "'I accept two primaries' on the confirmation page"
                )
            ctx.note(
                "two primaries accepted",
                f"{other.label} is still a primary; the DBA ticked 'I accept two primaries'",
            )
    ctx.ssh(instance.server, command_for("promote", instance), "promote")
    result = wait_for(
        ctx, instance, "out of recovery", lambda r, e: r is not None and not r.in_recovery
    )
    record(instance, result)
    return f"{instance.label} promoted: now a primary at LSN {result.lsn}"
