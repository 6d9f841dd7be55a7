"""A herd as a planning.Snapshot: from the inventory (confirmation pages) or from live
probe answers handed in by the job (herds.drill.live_snapshot). No I/O here.

Both pages and jobs build their snapshot with `build`, so the plan a DBA confirms and the
plan the job carries out differ only by the facts they were given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import timezone

from herds import planning
from herds.models import Herd
from instances import inventory
from instances.choices import JobKind, Role
from instances.models import Instance
from instances.wal import lsn_to_int

if TYPE_CHECKING:
    from instances.probe import ProbeResult

# Live answers: instance id → what the probe saw (None: it did not answer).
Answers = Mapping[int, "ProbeResult | None"]


def member(instance: Instance, answer: ProbeResult | None = None, *, live: bool) -> planning.Member:
    candidacy = getattr(instance, "dr_candidacy", None)
    common = dict(
        id=instance.pk,
        label=instance.label,
        hostname=instance.server.hostname,
        fenced=instance.fenced,
        dr_candidate=candidacy is not None,
        priority=candidacy.priority if candidacy is not None else 1000,
        environment=instance.server.environment.name,
    )
    if live:
        if answer is None:
            return planning.Member(answering=False, **common)
        return planning.Member(
            answering=True,
            in_recovery=answer.in_recovery,
            current_lsn=None if answer.in_recovery else lsn_to_int(answer.lsn),
            receive_lsn=lsn_to_int(answer.receive_lsn),
            replay_lsn=lsn_to_int(answer.replay_lsn),
            **common,
        )
    # From the inventory, for confirmation pages: what the last check recorded.
    is_replica = instance.role == Role.REPLICA
    return planning.Member(
        answering=bool(instance.online),
        in_recovery=is_replica if instance.online else None,
        current_lsn=None if is_replica else lsn_to_int(instance.last_lsn),
        receive_lsn=lsn_to_int(instance.receive_lsn or instance.last_lsn) if is_replica else None,
        replay_lsn=lsn_to_int(instance.replay_lsn or instance.last_lsn) if is_replica else None,
        **common,
    )


def build(
    herd: Herd, instances: list[Instance], answers: Answers | None = None
) -> planning.Snapshot:
    """`answers` given: a live snapshot (every member as probed just now); else the
    inventory's last recorded state."""
    live = answers is not None
    primary = inventory.recorded_primary(instances)
    members = {i.pk: member(i, (answers or {}).get(i.pk), live=live) for i in instances}
    return planning.Snapshot(
        herd=herd.name,
        primary=members[primary.pk] if primary else None,
        replicas=tuple(
            members[i.pk]
            for i in instances
            if (primary is None or i.pk != primary.pk) and i.role != Role.PRIMARY
        ),
        vhost=herd.vhost,
        environment=herd.environment.name,
        last_known_primary_lsn=lsn_to_int(primary.last_lsn) if primary else None,
        last_seen_seconds=_last_answer_age(primary),
    )


def _last_answer_age(primary: Instance | None) -> float | None:
    """How long ago the primary's recorded position was current: its last check if that
    check found it answering, else when checks first found it down (its last answer came
    at most one health interval before)."""
    if primary is None:
        return None
    moment = primary.last_checked if primary.online else primary.state_changed_at
    moment = moment or primary.last_checked
    return (timezone.now() - moment).total_seconds() if moment else None


def plan(snap: planning.Snapshot, kind: str, params: Mapping) -> planning.Plan:
    """The plan of a switchover or failover with the options the DBA chose."""
    if kind == JobKind.SWITCHOVER:
        return planning.plan_switchover(snap, params.get("target_id"))
    return planning.plan_failover(
        snap,
        max_loss_bytes=settings.FAILOVER_MAX_LOSS_BYTES,
        accept_loss=bool(params.get("accept_data_loss")),
        target_id=params.get("target_id"),
    )


def from_inventory(herd: Herd, kind: str, params: Mapping) -> planning.Plan:
    """What a confirmation page shows: the plan from the inventory alone."""
    return plan(build(herd, inventory.herd_instances(herd.pk)), kind, params)


def expected_primary(herd: Herd) -> dict:
    """The job's params: the primary the DBA saw, which the job checks is still it."""
    primary = inventory.recorded_primary(inventory.herd_instances(herd.pk))
    return {"expected_primary_id": primary.pk if primary else None}
