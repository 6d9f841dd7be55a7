"""A herd as a planning.Snapshot, from live probe answers handed in by the confirmation
page (herds.live) or the job (herds.drill.live_snapshot), plus the inventory's recorded
primary and its last position. No I/O here.

Both pages and jobs build their snapshot with `build`, so the plan a DBA confirms and the
plan the job carries out differ only by when the facts were gathered.
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


def member(instance: Instance, answer: ProbeResult | None) -> planning.Member:
    """One member as the probe saw it just now (None: it did not answer)."""
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


def build(herd: Herd, instances: list[Instance], answers: Answers) -> planning.Snapshot:
    """A live snapshot: every member as probed just now; the primary is the recorded one,
    and its last recorded position bounds a loss from below."""
    primary = inventory.recorded_primary(instances)
    members = {i.pk: member(i, answers.get(i.pk)) for i in instances}
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
        return planning.plan_switchover(
            snap, params.get("target_id"), max_lag_bytes=settings.SWITCHOVER_MAX_LAG_BYTES
        )
    return planning.plan_failover(
        snap,
        max_loss_bytes=settings.FAILOVER_MAX_LOSS_BYTES,
        accept_loss=bool(params.get("accept_data_loss")),
        target_id=params.get("target_id"),
    )


def expected_primary(herd: Herd) -> dict:
    """The job's params: the primary the DBA saw, which the job checks is still it."""
    primary = inventory.recorded_primary(inventory.herd_instances(herd.pk))
    return {"expected_primary_id": primary.pk if primary else None}
