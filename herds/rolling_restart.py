"""Rolling restart of a herd: no downtime beyond one switchover's write gap.

1. a live snapshot: refuse (changing nothing) a herd without an answering primary, with
   two primaries, or with a member that does not answer (restarting around a hole would
   leave the herd with fewer copies than the DBA thinks);
2. its replicas one at a time (cascades before their upstreams): restart (fast), wait
   until it accepts connections and streams again from its upstream;
3. then the primary, as the DBA chose: "switchover" switches over to a restarted replica
   (in the herd's own environment first) and the old primary restarts as its replica in
   the rejoin; "in place" restarts the primary (clients see a restart's outage).

With `only_pending`, an instance whose pg_settings show no pending_restart is left alone
(and the primary is not switched over when it needs nothing).
"""

from __future__ import annotations

from herds import drill as drills
from herds.switchover import run_switchover
from instances import probe, steps
from instances.choices import JobKind, Role
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.lifecycle import refuse_if_unsafe, wait_for
from instances.models import Instance

MODES = ("switchover", "in_place")


def _pending(instance: Instance) -> list[str] | None:
    try:
        return probe.pending_restart(instance.server.hostname, instance.port)
    except probe.ProbeError:
        return None


def _restart(
    ctx: JobContext, instance: Instance, upstream: Instance | None, done: list[str]
) -> None:
    ctx.leaves = (
        f"restarted so far: {', '.join(done) if done else 'nothing'}; {instance.label} was "
        "being restarted: check it"
    )
    try:
        _restart_one(ctx, instance, upstream)
    except JobFailed as exc:
        raise JobFailed(f"rolling restart stopped: {exc}; {ctx.leaves}") from None


def _restart_one(ctx: JobContext, instance: Instance, upstream: Instance | None) -> None:
    refuse_if_unsafe(ctx, instance, "restart")
    ctx.ssh(
        instance.server,
        steps.command_for("restart", instance, mode="fast"),
        f"restart {instance.label} (fast)",
    )
    result = wait_for(ctx, instance, "accepting connections", lambda r, e: r is not None)
    steps.record(instance, result)
    if upstream is not None:
        steps.wait_streaming(ctx, instance, upstream)


def _depth(instance: Instance, members: dict[int, Instance]) -> int:
    depth, node = 0, instance
    while node.upstream_id and node.upstream_id in members and depth < 32:
        node, depth = members[node.upstream_id], depth + 1
    return depth


@operation(JobKind.ROLLING_RESTART)
def rolling_restart(ctx: JobContext) -> str:
    herd = ctx.job.herd
    params = ctx.job.params
    mode = params.get("mode", "switchover")
    if mode not in MODES:
        raise JobFailed(f"mode {mode!r} is not one of {', '.join(MODES)}")
    only_pending = bool(params.get("only_pending"))
    snap, members = drills.live_snapshot(herd)
    primary = members.get(snap.primary.id) if snap.primary else None
    if primary is None or not snap.primary.answering or snap.primary.in_recovery:
        raise JobFailed(f"{herd.name}: no answering primary: nothing restarted (fix it first)")
    silent = [m.label for m in snap.replicas if not m.answering and not m.fenced]
    if silent:
        raise JobFailed(
            f"{herd.name}: {', '.join(silent)} not answering: nothing restarted (a rolling "
            "restart around a missing replica would leave fewer copies than you think)"
        )
    replicas = [
        members[m.id]
        for m in snap.replicas
        if not m.fenced and members[m.id].role == Role.REPLICA and m.in_recovery
    ]
    # Cascades first: a replica restarts before the upstream it streams from.
    replicas.sort(key=lambda r: (-_depth(r, members), r.server.hostname))
    done, skipped = [], []
    for replica in replicas:
        pending = _pending(replica)
        if only_pending and pending == []:
            skipped.append(replica.label)
            ctx.note(f"{replica.label}: no pending restart", "left alone")
            continue
        if pending:
            ctx.note(f"{replica.label}: pending restart", ", ".join(pending))
        upstream = members.get(replica.upstream_id) if replica.upstream_id else primary
        _restart(ctx, replica, upstream, done)
        done.append(replica.label)
    pending = _pending(primary)
    if only_pending and pending == []:
        ctx.note(f"{primary.label}: no pending restart", "left alone, still the primary")
        skipped.append(primary.label)
        return _summary(herd.name, done, skipped, "the primary needed no restart")
    if pending:
        ctx.note(f"{primary.label}: pending restart", ", ".join(pending))
    if mode == "in_place":
        _restart(ctx, primary, None, done)
        done.append(primary.label)
        return _summary(herd.name, done, skipped, "the primary restarted in place")
    restarted = [r for r in replicas if r.label in done] or replicas
    if not restarted:
        raise JobFailed(
            f"{herd.name} has no replica to switch over to: restart its primary in place"
        )
    same = [r for r in restarted if r.server.environment_id == herd.environment_id]
    target = (same or restarted)[0]
    ctx.leaves = f"replicas restarted: {', '.join(done) if done else 'none'}"
    outcome = run_switchover(ctx, {"expected_primary_id": primary.pk, "target_id": target.pk})
    # Its rejoin restarted the old primary: record what it says now (pending_restart…).
    primary.refresh_from_db()
    result, error = steps.try_probe(primary)
    steps.record(primary, result, error)
    done.append(primary.label)
    return _summary(herd.name, done, skipped, outcome)


def _summary(herd: str, done: list[str], skipped: list[str], last: str) -> str:
    text = f"{herd}: restarted {', '.join(done) if done else 'nothing'}"
    if skipped:
        text += f"; left alone (no pending restart): {', '.join(skipped)}"
    return f"{text}; {last}"
