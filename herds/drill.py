"""What a switchover and a failover share: the live snapshot and plan, the Drill record,
promotion with proof of a write, DNS, and repointing the other replicas.

Each drill job holds the herd's lock for its whole run (jobs.runner.lock_keys), re-checks
that the herd still has the primary the DBA confirmed (so two DBAs clicking at once move a
herd exactly once), and writes a Drill row an auditor can read: start, moment the new
primary accepted writes, DNS cut-over, data lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from django.conf import settings
from django.utils import timezone

from herds import dns, dns_records, planning, snapshot
from herds.models import Drill, Herd
from instances import inventory, probe, steps
from instances.choices import JobKind, Role
from instances.jobs.registry import JobCancelled, JobFailed
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.wal import EndOfWal, int_to_lsn


def live_snapshot(herd: Herd) -> tuple[planning.Snapshot, dict[int, Instance]]:
    """Every member probed now, at once; the snapshot planning decides from."""
    instances = inventory.herd_instances(herd.pk)

    def ask(instance: Instance):
        result, _error = steps.try_probe(instance)
        return instance.pk, result

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(instances)))) as pool:
        answers = dict(pool.map(ask, instances))
    return snapshot.build(herd, instances, answers), {i.pk: i for i in instances}


class Begun(NamedTuple):
    herd: Herd
    plan: planning.Plan
    instances: dict[int, Instance]
    drill: Drill
    old: Instance | None  # the primary the plan replaces
    snap: planning.Snapshot
    end_of_wal: EndOfWal | None  # a failover: the old primary's, read from its disk


def begin(ctx: JobContext, kind: str, params: dict | None = None) -> Begun:
    """Live snapshot, the confirmed primary still the primary, the plan (refused: nothing
    done), and the Drill row. `params`: the job's own unless given (a rolling restart
    switches over with the target it picked)."""
    herd: Herd = ctx.job.herd
    params = ctx.job.params if params is None else params
    snap, instances = live_snapshot(herd)
    end_of_wal = None
    expected = params.get("expected_primary_id")
    current = snap.primary.id if snap.primary else None
    if expected is not None and expected != current:
        now = instances[current] if current else None
        raise JobFailed(
            f"{herd.name} changed since the confirmation: its primary is now "
            f"{now.label if now else 'none'}; nothing done (another job may have "
            "switched it already): plan again"
        )
    if kind == JobKind.FAILOVER and snap.primary is not None and not snap.primary.answering:
        # Only the old primary's own WAL proves what a failover loses: read it where its
        # server still answers SSH.
        end_of_wal, why = steps.read_end_of_wal(ctx, instances[snap.primary.id])
        ctx.note("the old primary's end of WAL", why)
        if end_of_wal is not None:
            snap = dataclasses.replace(
                snap,
                primary_end_of_wal=end_of_wal.lsn,
                salvage_possible=not params.get("skip_salvage"),
            )
    plan = snapshot.plan(snap, kind, params)
    ctx.note("plan", "\n".join([plan.sentence, *plan.steps]))
    if not plan.ok:
        raise JobFailed(f"{herd.name}: {plan.sentence}")
    primary = instances.get(snap.primary.id) if snap.primary else None
    drill = Drill.objects.create(
        job=ctx.job,
        herd=herd,
        kind=kind,
        requested_by_name=ctx.job.requested_by_name,
        plan=plan.sentence,
        old_primary=primary.label if primary else "",
        new_primary=plan.candidate.label,
        started_at=ctx.job.started_at or timezone.now(),
        last_known_lsn=int_to_lsn(snap.primary_end_of_wal)
        if snap.primary_end_of_wal is not None
        else int_to_lsn(snap.last_known_primary_lsn)
        if snap.last_known_primary_lsn is not None
        else "",
    )
    return Begun(herd, plan, instances, drill, primary, snap, end_of_wal)


def finish(drill: Drill, outcome: str) -> None:
    drill.finished_at = timezone.now()
    drill.outcome = outcome[:500]
    drill.save(update_fields=["finished_at", "outcome"])


def reason(exc: BaseException) -> str:
    return "cancelled by a user" if isinstance(exc, JobCancelled) else str(exc)


def promote(
    ctx: JobContext,
    herd: Herd,
    new: Instance,
    drill: Drill,
    lost: int | None,
    promoted_lsn: str | None,
    stopped_note: str,
    *,
    lost_exact: bool,
) -> str:
    """Promote and prove a write; record the moment (RTO). A failure here leaves the herd
    without a writable primary, so the error says which instance to check first."""
    try:
        ctx.ssh(new.server, steps.command_for("promote", new), "promote", urgent=True)
        lsn = steps.wait_writable(ctx, new)
    except (JobFailed, JobCancelled) as exc:
        finish(drill, f"promotion failed: {reason(exc)}")
        raise JobFailed(
            f"{herd.name}: promoting {new.label} failed ({reason(exc)}); "
            f"{stopped_note}; check whether {new.label} left recovery before "
            "starting anything"
        ) from None
    drill.writable_at = timezone.now()
    drill.promoted_lsn, drill.data_lost_bytes = promoted_lsn or lsn, lost
    drill.data_lost_exact = lost_exact
    drill.save(update_fields=["writable_at", "promoted_lsn", "data_lost_bytes", "data_lost_exact"])
    try:
        # After the write gap: the picture shows the new timeline at once.
        timeline = probe.current_timeline(new.server.hostname, new.port)
    except probe.ProbeError:
        timeline = None
    Instance.objects.filter(pk=new.pk).update(
        role=Role.PRIMARY,
        upstream=None,
        streams_from="",
        online=True,
        last_lsn=lsn,
        timeline=timeline,
        state_changed_at=timezone.now(),
    )
    return lsn


def after_promotion(
    ctx: JobContext, herd: Herd, new: Instance, drill: Drill, rest: Callable[[], str]
) -> str:
    """DNS, repointing, rejoining: the switch has happened; a failure now is reported as
    such, with what was left undone, never as if nothing had changed."""
    try:
        return rest()
    except (JobFailed, JobCancelled) as exc:
        finish(drill, f"promoted; then: {reason(exc)}")
        raise JobFailed(
            f"{herd.name} now has its primary on {new.label} (accepting writes), "
            f"but a later step failed: {reason(exc)}. Check DNS (Refresh DNS), remaster "
            "replicas not yet pointed at it, and rebuild the old primary"
        ) from None


def move_dns(ctx: JobContext, herd: Herd, new_primary: Instance, drill: Drill) -> str:
    """Point the vhost at the new primary; a DNS failure does not undo the database switch,
    it is recorded and reported (Refresh DNS re-applies it)."""
    if not herd.vhost:
        ctx.note("DNS", "the herd has no vhost: nothing to update")
        return ""
    with ctx.step(
        f"point {herd.vhost} at {new_primary.server.hostname}", settings.DNS_SERVER
    ) as step:
        try:
            result = dns.point_vhost(herd.vhost, new_primary.server.hostname)
        except dns.DNSError as exc:
            step.ok = False
            step.output = str(exc)
            drill.dns_ok = False
            drill.save(update_fields=["dns_ok"])
            return f"DNS not updated ({exc}): fix it, then run Refresh DNS on {herd.name}"
        step.output = result.describe()
    drill.dns_at, drill.dns_ok = timezone.now(), True
    drill.save(update_fields=["dns_at", "dns_ok"])
    return ""


def move_ro_dns(ctx: JobContext, herd: Herd) -> str:
    """After the roles changed: list the herd's replicas, as the inventory now records them
    (online, unfenced), under its read-only vhost. A failure is reported, not undone."""
    if not herd.ro_vhost:
        return ""
    replicas = dns_records.desired_records(herd, inventory.herd_instances(herd.pk))["replicas"]
    what = f"list {', '.join(replicas)} under" if replicas else "delete (no online replica)"
    with ctx.step(f"{what} {herd.ro_vhost}", settings.DNS_SERVER) as step:
        try:
            result = dns.set_ro_vhost(herd.ro_vhost, replicas)
        except dns.DNSError as exc:
            step.ok = False
            step.output = str(exc)
            return (
                f"read-only vhost {herd.ro_vhost} not updated ({exc}): fix it, then run "
                f"Refresh DNS on {herd.name}"
            )
        step.output = result.describe()
    return ""


def repoint(ctx: JobContext, replica: Instance, upstream: Instance) -> None:
    """A running replica follows the new primary (steps.set_upstream), checked to stream."""
    try:
        steps.set_upstream(ctx, replica, upstream)
    except probe.ProbeError as exc:
        raise JobFailed(
            f"{replica.label}: could not repoint it ({exc}); its upstream is still the "
            "old primary: remaster it once it answers"
        ) from None
    steps.wait_streaming(ctx, replica, upstream)
    Instance.objects.filter(pk=replica.pk).update(
        upstream=upstream, role=Role.REPLICA, streams_from=upstream.address, needs_remaster=False
    )
