"""Running campaigns: create one with its jobs held, release them wave by wave, pause,
resume, abandon.

Every change of a campaign is decided under a row lock on it (SELECT … FOR UPDATE), from
its jobs' states (instances.campaign_planning.decide), so that two jobs ending at once,
the beat sweep and a DBA's click never release a job twice nor miss one. `advance` runs
when one of its jobs ends (the runner and the reaper call it), when it is created or
resumed, and from beat every OUTBOX_INTERVAL seconds: a worker killed between a job's end
and its campaign's advance delays the next wave by one sweep, never for good.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from instances import audit as audit_trail
from instances.campaign_planning import Item, assign_waves, decide
from instances.choices import AuditVerb, CampaignKind, CampaignState, JobOrigin, JobState
from instances.jobs import queue
from instances.jobs.registry import JobFailed
from instances.models import Campaign, Job

audit = logging.getLogger("elephaas.audit")
log = logging.getLogger("elephaas.jobs")


@dataclass(frozen=True)
class Entry:
    """One job of a campaign: its kind, its target, its options."""

    kind: str
    target: object
    params: dict = field(default_factory=dict)


def create(
    kind: str,
    title: str,
    entries: Sequence[Entry],
    *,
    user=None,
    concurrency: int = 3,
    canary: bool = False,
    wave_size: int | None = None,
    halt_on_failure: bool = True,
    params: dict | None = None,
    reverse_of: Campaign | None = None,
    origin: str = JobOrigin.ADMIN,
    remote: str = "-",
) -> Campaign:
    """The campaign and all its jobs, held; its first wave is released once committed.
    It and each of its jobs are audit events from `remote`."""
    if not entries:
        raise JobFailed("a campaign needs at least one job")
    if concurrency < 1:
        raise JobFailed("a campaign's concurrency is at least 1")
    name = user.get_username() if user is not None else f"({JobOrigin(origin).label})"
    waves = assign_waves(len(entries), canary=canary, wave_size=wave_size)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            kind=kind,
            title=title[:200],
            requested_by=user,
            requested_by_name=name,
            concurrency=concurrency,
            canary=canary,
            halt_on_failure=halt_on_failure,
            params=params or {},
            reverse_of=reverse_of,
        )
        for entry, wave in zip(entries, waves, strict=True):
            queue.create_jobs(
                entry.kind,
                [entry.target],
                user=user,
                params=entry.params,
                origin=origin,
                campaign=campaign,
                wave=wave,
                remote=remote,
            )
        site = kind in CampaignKind.site_drills()
        audit_trail.record(
            AuditVerb.SITE_DRILL_QUEUED if site else AuditVerb.CAMPAIGN_QUEUED,
            f"campaign #{campaign.pk} {kind} ({title}) of {len(entries)} job(s) in "
            f"{max(waves)} wave(s), concurrency {concurrency}, created by {name}",
            username=name,
            remote=remote,
            obj=campaign,
        )
        transaction.on_commit(lambda: advance(campaign.pk, remote=remote))
    return campaign


def _items(campaign: Campaign) -> list[Item]:
    """The campaign's jobs as `decide` sees them; a job retried within the campaign is
    replaced by its retry (the failure it was no longer halts or fails the campaign)."""
    rows = list(campaign.jobs.values_list("pk", "wave", "state", "held", "retry_of_id"))
    retried = {retry_of for *_, retry_of in rows if retry_of}
    return [
        Item(pk, wave or 1, state, held)
        for pk, wave, state, held, _retry_of in rows
        if pk not in retried
    ]


def retry(job: Job, user, *, remote: str = "-") -> Job:
    """Queue a failed, errored or cancelled job again. A campaign's job is retried within
    its campaign, in its wave: the retry replaces the failure, so a halted campaign runs
    on (and halts again if the retry fails), and one that ended with failures reopens and
    can end succeeded. A paused campaign's retry waits, held, for the resume; an
    abandoned campaign's is a job of its own."""
    if not job.campaign_id:
        return queue.retry(job, user, remote=remote)
    target = queue.retryable_target(job)
    if Job.objects.filter(retry_of=job).exists():
        raise JobFailed(f"job #{job.pk} was already retried: retry its retry instead")
    name = _name(user)
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=job.campaign_id)
        if campaign.state == CampaignState.ABANDONED:
            return queue.retry(job, user, remote=remote)
        [new] = queue.create_jobs(
            job.kind,
            [target],
            user=user,
            params=job.params,
            origin=job.origin,
            campaign=campaign,
            wave=job.wave,
            remote=remote,
            retry_of=job,
        )
        if campaign.state != CampaignState.PAUSED:
            campaign.state = CampaignState.RUNNING
            campaign.finished_at = None
        campaign.state_note = f"job #{job.pk} retried as #{new.pk} by {name}"
        campaign.save(update_fields=["state", "state_note", "finished_at"])
        transaction.on_commit(lambda: advance(campaign.pk, remote=remote))
    new.refresh_from_db()
    return new


def advance(campaign_id: int, *, remote: str = audit_trail.WORKER) -> list[int]:
    """Decide and apply what the campaign does next; returns the job ids released. Its
    end is an audit event, "from" whoever's request or worker ended it (`remote`)."""
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
        if campaign is None or (campaign.is_terminal and campaign.finished_at):
            return []
        decision = decide(
            _items(campaign),
            state=campaign.state,
            concurrency=campaign.concurrency,
            halt_on_failure=campaign.halt_on_failure,
            failures_accepted=campaign.params.get("failures_accepted", []),
            note=campaign.state_note,
        )
        released = []
        if decision.release:
            Job.objects.filter(pk__in=decision.release, held=True).update(held=False)
            released = list(
                Job.objects.filter(pk__in=decision.release, state=JobState.QUEUED).order_by(
                    "wave", "pk"
                )
            )
            transaction.on_commit(lambda: queue.publish(released))
        changed = decision.state != campaign.state or decision.note != campaign.state_note
        if changed or (decision.finished and not campaign.finished_at):
            if decision.state != campaign.state:
                audit.info(
                    "campaign #%s %s → %s: %s",
                    campaign.pk,
                    campaign.state,
                    decision.state,
                    decision.note,
                )
            campaign.state = decision.state
            campaign.state_note = decision.note[:500]
            if decision.finished and not campaign.finished_at:
                campaign.finished_at = timezone.now()
                _record_end(campaign, remote)
            campaign.save(update_fields=["state", "state_note", "finished_at"])
    if released:
        log.info(
            "campaign #%s released job(s) %s", campaign_id, ", ".join(f"#{j.pk}" for j in released)
        )
    return [j.pk for j in released]


def _record_end(campaign: Campaign, remote: str) -> None:
    # In the transaction that ends it: the row commits with the campaign's end.
    site = campaign.kind in CampaignKind.site_drills()
    audit_trail.record(
        AuditVerb.SITE_DRILL_ENDED if site else AuditVerb.CAMPAIGN_ENDED,
        f"campaign #{campaign.pk} {campaign.kind} ({campaign.title}) ended "
        f"{campaign.state}: {campaign.state_note}",
        username=campaign.requested_by_name,
        remote=remote,
        obj=campaign,
    )


def advance_unfinished() -> int:
    """The beat sweep: advance every campaign that has not ended. Returns how many jobs
    it released."""
    ids = Campaign.objects.exclude(finished_at__isnull=False).values_list("pk", flat=True)
    return sum(len(advance(pk)) for pk in ids)


def _name(user) -> str:
    return user.get_username() if user is not None else "system"


def _record(verb: AuditVerb, campaign: Campaign, message: str, user, remote: str) -> None:
    audit_trail.record(verb, message, username=_name(user), remote=remote, obj=campaign)


def pause(campaign: Campaign, user, *, remote: str = "-") -> str:
    with transaction.atomic():
        done = Campaign.objects.filter(pk=campaign.pk, state=CampaignState.RUNNING).update(
            state=CampaignState.PAUSED, state_note=f"paused by {_name(user)}"
        )
        if done:
            _record(
                AuditVerb.CAMPAIGN_PAUSED,
                campaign,
                f"campaign #{campaign.pk} paused by {_name(user)}",
                user,
                remote,
            )
    if not done:
        return f"Campaign #{campaign.pk} is not running: nothing paused."
    return (
        f"Campaign #{campaign.pk} paused: the jobs running now finish, no other starts "
        "until it is resumed."
    )


def resume(campaign: Campaign, user, *, remote: str = "-") -> str:
    """A paused or halted campaign runs on; a halted one's failures are accepted (they
    stay failed: retry their jobs on their own if needed)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.state not in (CampaignState.PAUSED, CampaignState.HALTED):
            return f"Campaign #{campaign.pk} is {locked.get_state_display()}: nothing resumed."
        failed = list(
            locked.jobs.filter(state__in=JobState.terminal())
            .exclude(state=JobState.SUCCEEDED)
            .values_list("pk", flat=True)
        )
        locked.params = {**locked.params, "failures_accepted": failed}
        locked.state = CampaignState.RUNNING
        locked.state_note = f"resumed by {_name(user)}" + (
            f", past failed job(s) {', '.join(f'#{pk}' for pk in failed)}" if failed else ""
        )
        locked.save(update_fields=["params", "state", "state_note"])
        _record(
            AuditVerb.CAMPAIGN_RESUMED,
            campaign,
            f"campaign #{campaign.pk} resumed by {_name(user)}",
            user,
            remote,
        )
        transaction.on_commit(lambda: advance(campaign.pk, remote=remote))
    return f"Campaign #{campaign.pk} resumed."


def abandon(campaign: Campaign, user, *, remote: str = "-") -> str:
    """Cancel what is still held; what runs now finishes."""
    name = _name(user)
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.is_terminal:
            return f"Campaign #{campaign.pk} has already ended ({locked.get_state_display()})."
        cancelled = Job.objects.filter(campaign=locked, held=True, state=JobState.QUEUED).update(
            state=JobState.CANCELLED,
            held=False,
            finished_at=timezone.now(),
            cancel_requested=True,
            cancel_requested_by=name,
            error=f"not started: campaign #{campaign.pk} abandoned by {name}",
        )
        locked.state = CampaignState.ABANDONED
        locked.state_note = f"abandoned by {name}: {cancelled} held job(s) cancelled"
        locked.save(update_fields=["state", "state_note"])
        _record(
            AuditVerb.CAMPAIGN_ABANDONED,
            locked,
            f"campaign #{locked.pk} abandoned by {name} ({cancelled} held job(s) cancelled)",
            user,
            remote,
        )
        transaction.on_commit(lambda: advance(campaign.pk, remote=remote))
    return (
        f"Campaign #{campaign.pk} abandoned: {cancelled} job(s) that had not started were "
        "cancelled; any job running now finishes."
    )
