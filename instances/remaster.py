"""Remaster: point a running replica at another upstream of its herd, and check it streams.

The refusals (a loop, an upstream behind the replica) are pure (rebuild_planning); the
change itself is the shared `steps.set_upstream` (ALTER SYSTEM SET primary_conninfo and a
reload), the same step a switchover uses to repoint the other replicas.
"""

from __future__ import annotations

from instances import inventory, probe, steps
from instances import rebuild_planning as rp
from instances.choices import HERD_PRIMARY, JobKind
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.rebuild import load
from instances.wal import int_to_lsn, lsn_to_int


def _position(instance: Instance) -> tuple[rp.Position, int | None]:
    try:
        in_recovery, lsn, replayed, timeline = probe.replication_position(
            instance.server.hostname, instance.port
        )
    except probe.ProbeError as exc:
        raise JobFailed(f"{instance.label} does not answer ({exc}): nothing changed") from None
    position = rp.Position(instance.label, in_recovery, lsn_to_int(lsn) or 0, timeline)
    return position, lsn_to_int(replayed)


@operation(JobKind.REMASTER)
def remaster(ctx: JobContext) -> str:
    """1. check the new upstream: same herd, not itself, not one of its own downstreams;
    2. live: the replica is in recovery; the upstream is not behind it (timeline, LSN);
    3. ALTER SYSTEM SET primary_conninfo + reload; 4. wait until it streams from it;
    5. record the upstream on the row."""
    replica = load(ctx.job.instance_id)
    upstream_id = ctx.job.params.get("upstream_id")
    if upstream_id == HERD_PRIMARY:
        primary = inventory.recorded_primary(inventory.herd_instances(replica.herd_id))
        if primary is None:
            raise JobFailed(f"{replica.herd.name} has no recorded primary: nothing to follow")
        ctx.note("new upstream", f"the herd's recorded primary, {primary.label}")
        upstream_id = primary.pk
    upstream = (
        Instance.objects.select_related("server", "herd").filter(pk=upstream_id).first()
        if isinstance(upstream_id, int)
        else None
    )
    if upstream is None:
        raise JobFailed(f"{replica.label}: the new upstream (id {upstream_id!r}) does not exist")
    if upstream.pk == replica.pk:
        raise JobFailed(f"{replica.label} cannot stream from itself")
    if upstream.herd_id != replica.herd_id:
        raise JobFailed(f"{upstream.label} is not in herd {replica.herd.name}")
    if upstream.fenced:
        raise JobFailed(f"{upstream.label} is fenced: it cannot be an upstream")
    node, depth = upstream, 0
    while node is not None and depth < 32:
        if node.upstream_id == replica.pk:
            raise JobFailed(
                f"{upstream.label} streams (directly or through others) from {replica.label}: "
                "following it would be a replication loop"
            )
        node = load(node.upstream_id) if node.upstream_id else None
        depth += 1
    position, replayed = _position(replica)
    if not position.in_recovery:
        raise JobFailed(f"{replica.label} is a primary (not in recovery): nothing to remaster")
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
        raise JobFailed(f"refusing to remaster {replica.label}: {refusal}")
    try:
        steps.set_upstream(ctx, replica, upstream)
    except probe.ProbeError as exc:
        raise JobFailed(f"{replica.label}: could not set primary_conninfo ({exc})") from None
    try:
        steps.wait_streaming(ctx, replica, upstream)
    except JobFailed as exc:
        raise JobFailed(
            f"{exc}; its primary_conninfo now names {upstream.label}: remaster it back to "
            "its previous upstream if that one works"
        ) from None
    result, error = steps.try_probe(replica)
    steps.record(replica, result, error)
    Instance.objects.filter(pk=replica.pk).update(
        upstream=upstream,
        streams_from=upstream.address,
        upstream_streaming=True,
        needs_remaster=False,
    )
    return f"{replica.label} now streams from {upstream.label}"
