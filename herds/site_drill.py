"""Site drills: move every selected herd to its DR copy as one campaign, and fail back.

`check` gathers the pre-flight facts live (every member probed at once, a signed no-op
DNS update, the jobs table) and returns, per herd, the switchover plan and one pass or fail
line per gate (herds.site_planning). `start` turns the herds that pass into a campaign of
switchovers (instances.jobs.campaigns): each herd's switchover is an ordinary job with its
steps, its confirmed target, and the gates it passed in its params for the drill record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from herds import dns, live, planning, site_planning, snapshot
from herds.models import Herd
from herds.site_planning import Facts, Gate
from instances import inventory
from instances.choices import CampaignKind, JobKind, JobState, Role
from instances.jobs import campaigns
from instances.models import Campaign, Instance, Job


@dataclass
class HerdCheck:
    herd: Herd
    target: Instance | None
    why: str
    plan: planning.Plan
    gates: list[Gate]
    facts: list[live.Fact]
    primary_id: int | None

    @property
    def ok(self) -> bool:
        return self.plan.ok and all(g.ok for g in self.gates)

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.ok]


def dr_target(herd: Herd, members: Sequence[Instance]) -> tuple[Instance | None, str]:
    """The herd's acknowledged DR candidate that is a replica now (lowest priority)."""
    acknowledged = sorted(
        (m for m in members if getattr(m, "dr_candidacy", None) is not None),
        key=lambda m: (m.dr_candidacy.priority, m.pk),
    )
    for member in acknowledged:
        if member.role == Role.REPLICA and not member.fenced:
            candidacy = member.dr_candidacy
            return member, (
                f"its acknowledged DR copy (priority {candidacy.priority}, environment "
                f"{member.server.environment.name})"
            )
    if acknowledged:
        labels = ", ".join(f"{m.label} ({m.get_role_display()})" for m in acknowledged)
        return None, f"no acknowledged DR copy is a replica now: {labels}; already moved?"
    return None, "no DR copy acknowledged (DR pairs: acknowledge one first)"


def failback_targets(source: Campaign) -> dict[int, tuple[int, str]]:
    """herd id → (its primary before `source`, why), for each herd `source` switched."""
    targets = {}
    for job in source.jobs.filter(kind=JobKind.SWITCHOVER, state=JobState.SUCCEEDED).order_by(
        "wave", "pk"
    ):
        before = job.params.get("expected_primary_id")
        if job.herd_id and before:
            targets[job.herd_id] = (before, f"its primary before campaign #{source.pk}")
    return targets


def busy(herd_ids: Iterable[int]) -> dict[int, list[str]]:
    """Each herd's queued or running jobs (on it or its instances), as labels; jobs held
    by a campaign count (they will run)."""
    ids = list(herd_ids)
    result: dict[int, list[str]] = defaultdict(list)
    jobs = (
        Job.objects.active()
        .filter(Q(herd_id__in=ids) | Q(instance__herd_id__in=ids))
        .values_list("pk", "kind", "state", "herd_id", "instance__herd_id")
    )
    for pk, kind, state, herd_id, instance_herd_id in jobs:
        result[herd_id or instance_herd_id].append(f"#{pk} {JobKind(kind).label} ({state})")
    return result


def check(herds: Sequence[Herd], targets: dict[int, tuple[int | None, str]]) -> list[HerdCheck]:
    """The plan and the gates of each herd, from facts gathered now. `targets`: herd id →
    (instance id or None, why); a herd missing from it goes to its DR copy."""
    members = {herd.pk: inventory.herd_instances(herd.pk) for herd in herds}
    answers, errors = live.probe_all([i for group in members.values() for i in group])
    dns_error, dns_seconds = None, None
    if any(herd.vhost for herd in herds):
        try:
            dns_seconds = dns.check_update_key()
        except dns.DNSError as exc:
            dns_error = str(exc)
    jobs = busy(herd.pk for herd in herds)
    checks = []
    for herd in herds:
        group = members[herd.pk]
        if herd.pk in targets:
            target_id, why = targets[herd.pk]
            target = next((m for m in group if m.pk == target_id), None)
            if target is None:
                why = f"{why}: no longer a member of {herd.name}"
        else:
            target, why = dr_target(herd, group)
        snap = snapshot.build(herd, group, {i.pk: answers.get(i.pk) for i in group})
        facts = Facts(
            target_id=target.pk if target else None,
            target_why=why,
            versions={pk: a.version_num for pk, a in answers.items() if a is not None},
            receiver={pk: a.wal_receiver_status for pk, a in answers.items() if a is not None},
            busy=jobs.get(herd.pk, []),
            dns_error=dns_error,
            dns_seconds=dns_seconds,
        )
        gates = site_planning.gates(snap, facts, max_lag_bytes=settings.SWITCHOVER_MAX_LAG_BYTES)
        if target is not None:
            plan = snapshot.plan(snap, JobKind.SWITCHOVER, {"target_id": target.pk})
        else:
            plan = planning.Plan(JobKind.SWITCHOVER, herd.name, ok=False, sentence=why)
        primary = inventory.recorded_primary(group)
        checks.append(
            HerdCheck(
                herd=herd,
                target=target,
                why=why,
                plan=plan,
                gates=gates,
                facts=live.facts(group, answers, errors),
                primary_id=primary.pk if primary else None,
            )
        )
    return checks


def start(
    kind: str,
    checks: Sequence[HerdCheck],
    *,
    user,
    concurrency: int,
    canary: bool,
    reverse_of: Campaign | None = None,
    remote: str = "-",
) -> Campaign:
    """A campaign of one switchover per herd that passed its gates, in the order given."""
    passed = [c for c in checks if c.ok]
    names = ", ".join(c.herd.name for c in passed)
    if kind == CampaignKind.FAILBACK:
        title = f"Fail back {len(passed)} herd(s) from campaign #{reverse_of.pk}: {names}"
    else:
        title = f"Move {len(passed)} herd(s) to the DR site: {names}"
    entries = [
        campaigns.Entry(
            JobKind.SWITCHOVER,
            c.herd,
            {
                "expected_primary_id": c.primary_id,
                "target_id": c.target.pk,
                "site": {
                    "why": c.why,
                    "plan": c.plan.sentence,
                    "gates": [[g.name, g.ok, g.detail] for g in c.gates],
                },
            },
        )
        for c in passed
    ]
    left_out = [
        {"herd": c.herd.name, "why": "; ".join(g.detail for g in c.failed_gates) or c.plan.sentence}
        for c in checks
        if not c.ok
    ]
    return campaigns.create(
        kind,
        title,
        entries,
        user=user,
        concurrency=concurrency,
        canary=canary,
        params={"left_out": left_out},
        reverse_of=reverse_of,
        remote=remote,
    )
