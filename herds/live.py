"""What the switchover and failover confirmation pages plan from: every member of the
selected herds probed now, all at once, each bounded by CONFIRM_PROBE_TIMEOUT, so that an
unreachable member costs one timeout, not a hang. Each member is marked "live" or "last
seen N s ago" (the inventory's last answer), so the page never mixes the two silently.

The job plans again from its own live snapshot, and reads what a page cannot (the old
primary's end of WAL over SSH) before it changes anything.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from herds import planning, snapshot
from herds.models import Herd
from instances import inventory, probe
from instances.models import Instance


@dataclass(frozen=True)
class Fact:
    """Where a member's facts on the page come from."""

    label: str
    live: bool
    said: str  # "live" / "no answer now (…); last seen 12 s ago" / "never seen"


def _freshness(instance: Instance, answered: bool, error: str) -> Fact:
    if answered:
        return Fact(instance.label, True, "live")
    if instance.last_checked and instance.online:
        age = (timezone.now() - instance.last_checked).total_seconds()
        seen = f"last seen answering {age:.0f} s ago"
    elif instance.last_checked and instance.state_changed_at:
        age = (timezone.now() - instance.state_changed_at).total_seconds()
        seen = f"checks have found it down for {age:.0f} s"
    elif instance.last_checked:
        seen = "not answering at the last check either"
    else:
        seen = "never seen answering"
    return Fact(instance.label, False, f"no answer now ({error}); {seen}")


def probe_all(instances: list[Instance]) -> tuple[dict, dict]:
    """Every instance probed now, at once, each bounded by CONFIRM_PROBE_TIMEOUT:
    (id → answer or None, id → why it did not answer)."""
    timeout = settings.CONFIRM_PROBE_TIMEOUT

    def ask(instance: Instance):
        try:
            answer = probe.probe(
                instance.server.hostname,
                instance.port,
                statement_timeout=timeout,
                connect_timeout=max(2, int(timeout)),
            )
            return instance.pk, answer, ""
        except probe.ProbeError as exc:
            return instance.pk, None, str(exc).split(": ", 1)[-1][:120]

    answers, errors = {}, {}
    if instances:
        with ThreadPoolExecutor(max_workers=min(32, len(instances))) as pool:
            for pk, answer, error in pool.map(ask, instances):
                answers[pk], errors[pk] = answer, error
    return answers, errors


def facts(instances: list[Instance], answers: dict, errors: dict) -> list[Fact]:
    return [_freshness(i, answers.get(i.pk) is not None, errors.get(i.pk, "")) for i in instances]


def plans(
    herds: list[Herd], kind: str, params: dict, targets: dict[int, int] | None = None
) -> list[tuple[Herd, planning.Plan, list, list[planning.Member]]]:
    """(herd, plan from live facts, each member's Fact, the replicas a DBA may choose as
    target) for each herd; `targets` (herd id → instance id): the DBA's choices."""
    members = {herd.pk: inventory.herd_instances(herd.pk) for herd in herds}
    answers, errors = probe_all([i for group in members.values() for i in group])
    result = []
    for herd in herds:
        group = members[herd.pk]
        snap = snapshot.build(herd, group, {i.pk: answers.get(i.pk) for i in group})
        chosen = (targets or {}).get(herd.pk)
        plan = snapshot.plan(snap, kind, {**params, "target_id": chosen})
        result.append((herd, plan, facts(group, answers, errors), planning.fit_replicas(snap)))
    return result
