"""Campaigns: one row that owns an ordered set of jobs, run in waves.

A campaign's jobs are ordinary jobs (their steps, locks, claims and ends are the job
runner's), created together and held: a held job is never claimed nor sent by the outbox
sweep. The campaign releases them wave by wave, at most `concurrency` at a time, the
canary (when there is one) alone in the first wave; with `halt_on_failure` the first job
that does not succeed halts it, and what is still held waits for a DBA to resume or
abandon it (instances.jobs.campaigns).
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from instances.choices import CampaignKind, CampaignState


class Campaign(models.Model):
    kind = models.CharField(max_length=32, choices=CampaignKind.choices)
    title = models.CharField(max_length=200, help_text="What it does, as the DBA confirmed it.")
    state = models.CharField(
        max_length=16, choices=CampaignState.choices, default=CampaignState.RUNNING, db_index=True
    )
    state_note = models.CharField(
        max_length=500, blank=True, help_text="Why it is paused, halted or ended as it is."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="elephaas_campaigns",
    )
    requested_by_name = models.CharField(max_length=150, blank=True)
    concurrency = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="At most this many of its jobs run at once.",
    )
    canary = models.BooleanField(
        default=False, help_text="Its first job ran alone, as wave 1, before any other."
    )
    halt_on_failure = models.BooleanField(
        default=True,
        help_text="The first job that does not succeed halts it; the rest stay held.",
    )
    reverse_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reversals",
        help_text="The campaign this one undoes (a failback: the site move it reverses).",
    )
    params = models.JSONField(
        default=dict,
        blank=True,
        help_text="What was checked and chosen when it was confirmed (never secrets).",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("control_campaign", "Can pause, resume and abandon campaigns"),
        ]

    def __str__(self) -> str:
        return f"campaign #{self.pk} {self.title}"

    @property
    def is_terminal(self) -> bool:
        return self.state in CampaignState.terminal()

    def get_absolute_url(self) -> str:
        return reverse("admin:instances_campaign_change", args=[self.pk])
