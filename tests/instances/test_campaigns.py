"""Campaigns on the lab, through the real worker: waves, the canary, the concurrency
limit, halt on failure, pause, resume and abandon, and the beat sweep's recovery."""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from instances.choices import CampaignKind, CampaignState
from instances.jobs import campaigns
from instances.models import Campaign, Job, JobKind, JobState
from tests.herds.drill_lab import instances, start, stop

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def reloads(drill, order=("127.0.1.1", "127.0.1.2", "127.0.1.3")):
    members = instances(drill)
    return [campaigns.Entry(JobKind.RELOAD, members[host]) for host in order]


def wait_campaign(campaign, states, timeout=60) -> Campaign:
    deadline = time.monotonic() + timeout
    while True:
        campaign = Campaign.objects.get(pk=campaign.pk)
        if campaign.state in states and (
            campaign.state != CampaignState.SUCCEEDED or campaign.finished_at
        ):
            return campaign
        assert time.monotonic() < deadline, (
            f"campaign still {campaign.state}: {campaign.state_note}"
        )
        time.sleep(0.1)


def jobs_of(campaign) -> list[Job]:
    return list(Job.objects.filter(campaign=campaign).order_by("wave", "pk"))


def test_canary_first_then_waves_one_at_a_time(celery_worker, drill):
    campaign = campaigns.create(
        CampaignKind.JOBS, "reload the drill herd", reloads(drill), concurrency=1, canary=True
    )
    campaign = wait_campaign(campaign, {CampaignState.SUCCEEDED, CampaignState.FAILED})
    assert campaign.state == CampaignState.SUCCEEDED, campaign.state_note
    assert campaign.finished_at is not None
    jobs = jobs_of(campaign)
    assert [j.wave for j in jobs] == [1, 2, 2]
    assert all(j.state == JobState.SUCCEEDED and not j.held for j in jobs)
    # concurrency 1: each started only after the one before it ended
    for before, after in zip(jobs, jobs[1:], strict=False):
        assert after.started_at >= before.finished_at, (before.pk, after.pk)
    # each ran once: one reload step each
    for job in jobs:
        assert job.steps.filter(name="reload").count() == 1


def test_a_failure_halts_the_rest_held_then_resume_runs_them(celery_worker, drill):
    stop(2)  # srv2's instance is down: its reload fails ("nothing to reload")
    try:
        campaign = campaigns.create(
            CampaignKind.JOBS,
            "reload, srv2 first",
            reloads(drill, ("127.0.1.2", "127.0.1.1", "127.0.1.3")),
            concurrency=2,
            canary=True,
        )
        campaign = wait_campaign(campaign, {CampaignState.HALTED})
        canary, *rest = jobs_of(campaign)
        assert canary.state == JobState.FAILED and "not answering" in canary.error
        assert f"#{canary.pk} failed" in campaign.state_note
        assert all(j.state == JobState.QUEUED and j.held and j.started_at is None for j in rest)
        # the beat sweep and a worker restart change nothing while halted
        assert campaigns.advance_unfinished() == 0
        time.sleep(1)
        assert all(Job.objects.get(pk=j.pk).held for j in rest)

        assert "resumed" in campaigns.resume(campaign, None)
        campaign = wait_campaign(campaign, {CampaignState.FAILED, CampaignState.SUCCEEDED})
        assert campaign.state == CampaignState.FAILED  # finished, with the canary's failure
        assert "1 of 3" in campaign.state_note
        assert all(j.state == JobState.SUCCEEDED for j in jobs_of(campaign)[1:])
    finally:
        start(2)


def test_pause_holds_everything_and_abandon_cancels_what_was_held(celery_worker, drill):
    with transaction.atomic():
        campaign = campaigns.create(CampaignKind.JOBS, "paused at once", reloads(drill))
        # paused before its first wave is released (the release runs on commit)
        campaigns.pause(campaign, None)
    time.sleep(1.5)
    campaigns.advance_unfinished()
    jobs = jobs_of(campaign)
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.PAUSED
    assert all(j.held and j.state == JobState.QUEUED and j.started_at is None for j in jobs)
    # a held job is never claimed, even when its message reaches a worker
    from instances.jobs import queue

    queue.publish(jobs[:1])
    time.sleep(1.5)
    assert Job.objects.get(pk=jobs[0].pk).state == JobState.QUEUED

    said = campaigns.abandon(campaign, None)
    assert "3 job(s) that had not started were cancelled" in said
    campaign = wait_campaign(campaign, {CampaignState.ABANDONED})
    assert campaign.finished_at is not None
    assert all(j.state == JobState.CANCELLED and not j.held for j in jobs_of(campaign))
    assert campaigns.resume(campaign, None).endswith("nothing resumed.")


def test_pause_then_resume_runs_it_to_the_end(celery_worker, drill):
    with transaction.atomic():
        campaign = campaigns.create(CampaignKind.JOBS, "resume me", reloads(drill), concurrency=3)
        campaigns.pause(campaign, None)
    time.sleep(1)
    assert all(j.held for j in jobs_of(campaign))
    campaigns.resume(campaign, None)
    campaign = wait_campaign(campaign, {CampaignState.SUCCEEDED})
    assert all(j.state == JobState.SUCCEEDED for j in jobs_of(campaign))


def test_the_sweep_releases_what_a_lost_advance_left(celery_worker, drill):
    """A worker killed between a job's end and its campaign's advance: the next wave is
    released by the beat sweep (simulated here by ending a wave behind the campaign's
    back, as such a worker would leave it)."""
    with transaction.atomic():
        campaign = campaigns.create(
            CampaignKind.JOBS, "lost advance", reloads(drill), concurrency=3, canary=True
        )
        campaigns.pause(campaign, None)
    canary = jobs_of(campaign)[0]
    Job.objects.filter(pk=canary.pk).update(state=JobState.SUCCEEDED, held=False)
    Campaign.objects.filter(pk=campaign.pk).update(state=CampaignState.RUNNING)
    released = campaigns.advance_unfinished()
    assert released == 2
    campaign = wait_campaign(campaign, {CampaignState.SUCCEEDED})
    assert all(j.state == JobState.SUCCEEDED for j in jobs_of(campaign))


def test_a_retried_failure_stays_in_its_campaign_which_runs_on_to_success(
    celery_worker, drill, admin_client
):
    stop(2)
    try:
        campaign = campaigns.create(
            CampaignKind.JOBS,
            "reload, srv2 first",
            reloads(drill, ("127.0.1.2", "127.0.1.1", "127.0.1.3")),
            concurrency=2,
            canary=True,
        )
        campaign = wait_campaign(campaign, {CampaignState.HALTED})
        canary, *rest = jobs_of(campaign)
        assert canary.state == JobState.FAILED
    finally:
        start(2)
    # The DBA fixes the cause and retries the failed job from the jobs list.
    response = admin_client.post(
        "/admin/instances/job/",
        {"action": "retry_jobs", "_selected_action": [canary.pk], "index": "0"},
        follow=True,
    )
    assert "queued again as" in response.content.decode()
    retry = Job.objects.get(retry_of=canary)
    assert (retry.campaign_id, retry.wave) == (campaign.pk, canary.wave)
    campaign = wait_campaign(campaign, {CampaignState.SUCCEEDED, CampaignState.FAILED})
    assert campaign.state == CampaignState.SUCCEEDED, campaign.state_note
    assert all(Job.objects.get(pk=j.pk).state == JobState.SUCCEEDED for j in [retry, *rest])
    # the rest started only after the retried canary succeeded
    retry.refresh_from_db()
    assert all(Job.objects.get(pk=j.pk).started_at >= retry.finished_at for j in rest)

    page = admin_client.get(f"/admin/instances/campaign/{campaign.pk}/change/").content.decode()
    assert f"retried as #{retry.pk}" in page and "3 of 3 jobs ended" in page
    listing = admin_client.get("/admin/instances/campaign/").content.decode()
    assert "3/3 succeeded" in listing
    # The failure was replaced once: retrying it again is refused.
    with pytest.raises(campaigns.JobFailed, match="already retried"):
        campaigns.retry(Job.objects.get(pk=canary.pk), None)
