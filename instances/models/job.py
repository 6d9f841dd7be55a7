"""Jobs: every operation ElepHaaS runs is a row people can see, with its steps.

A job is created by the admin (or a management command), enqueued after the transaction
commits, claimed by exactly one worker with a conditional update, run under a lock on its
target, and ended as succeeded, failed (an expected failure with a one-line reason),
errored (a bug: its traceback is kept) or cancelled. Its steps record what ran where,
with exit status, duration and output tail.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from instances.choices import JobKind, JobOrigin, JobState


class JobQuerySet(models.QuerySet):
    def with_related(self) -> JobQuerySet:
        return self.select_related(
            "requested_by",
            "server",
            "herd",
            "herd__environment",
            "instance__server",
            "instance__herd",
        )

    def active(self) -> JobQuerySet:
        return self.filter(state__in=JobState.active())


class Job(models.Model):
    kind = models.CharField(max_length=32, choices=JobKind.choices)
    state = models.CharField(
        max_length=16, choices=JobState.choices, default=JobState.QUEUED, db_index=True
    )
    batch = models.UUIDField(
        default=uuid.uuid4,
        db_index=True,
        help_text="Jobs queued together by one bulk action share it.",
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="elephaas_jobs",
    )
    # Kept even if the user row goes: the audit trail names who asked.
    requested_by_name = models.CharField(max_length=150, blank=True)
    origin = models.CharField(max_length=16, choices=JobOrigin.choices, default=JobOrigin.ADMIN)

    # The target: exactly one of these is set.
    server = models.ForeignKey(
        "instances.Server", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    herd = models.ForeignKey(
        "herds.Herd", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    instance = models.ForeignKey(
        "instances.Instance", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    target_label = models.CharField(
        max_length=255, blank=True, help_text="The target as it was named when queued."
    )
    params = models.JSONField(
        default=dict,
        blank=True,
        help_text="Options chosen on the confirmation page (never secrets).",
    )

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    summary = models.TextField(blank=True, help_text="What the job did or decided.")
    error = models.TextField(blank=True, help_text="One line: what failed, where, what to do.")
    traceback = models.TextField(blank=True, help_text="Kept for unexpected errors only.")
    task_id = models.CharField(max_length=64, blank=True, db_index=True)
    # The jobs table is the queue of record; the broker only rings the bell. A job the
    # broker did not take is sent again by the outbox sweep (instances.jobs.queue).
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was last handed to the broker."
    )
    dispatch_note = models.CharField(
        max_length=200,
        blank=True,
        help_text="Why a queued job has not reached a worker yet (e.g. the broker did not "
        "answer); cleared once the broker takes it.",
    )
    worker = models.CharField(max_length=255, blank=True, help_text="host:pid that ran it.")
    cancel_requested = models.BooleanField(default=False)
    cancel_requested_by = models.CharField(max_length=150, blank=True)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    # A campaign's job waits, held, until the campaign releases its wave: never claimed,
    # never sent by the outbox sweep while held.
    campaign = models.ForeignKey(
        "instances.Campaign", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    wave = models.PositiveSmallIntegerField(null=True, blank=True)
    held = models.BooleanField(
        default=False, help_text="Waiting for its campaign to release its wave."
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "kind"], name="job_state_kind_idx")]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(server__isnull=False, herd__isnull=True, instance__isnull=True)
                    | models.Q(server__isnull=True, herd__isnull=False, instance__isnull=True)
                    | models.Q(server__isnull=True, herd__isnull=True, instance__isnull=False)
                    | models.Q(
                        server__isnull=True,
                        herd__isnull=True,
                        instance__isnull=True,
                        state__in=sorted(JobState.terminal()),
                    )
                ),
                name="job_has_one_target",
                violation_error_message="A job targets exactly one server, herd or instance.",
            ),
        ]
        permissions = [
            ("cancel_job", "Can cancel their own jobs"),
            ("cancel_any_job", "Can cancel anyone's jobs"),
            ("retry_job", "Can retry jobs"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_kind_display()} {self.target_label}"

    @property
    def target(self):
        return self.instance or self.herd or self.server

    @property
    def is_terminal(self) -> bool:
        return self.state in JobState.terminal()

    @property
    def duration(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    def get_absolute_url(self) -> str:
        return reverse("admin:instances_job_change", args=[self.pk])


class JobStep(models.Model):
    """One thing a job did: a command on a server, a SQL probe, a decision."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    seq = models.PositiveIntegerField()
    name = models.CharField(max_length=255)
    host = models.CharField(max_length=255, blank=True, help_text="Where it ran.")
    command = models.TextField(blank=True, help_text="The quoted command line.")
    exit_status = models.IntegerField(null=True, blank=True)
    ok = models.BooleanField(null=True)
    started_at = models.DateTimeField(default=timezone.now)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds.")
    output = models.TextField(blank=True, help_text="The tail of stdout and stderr.")

    class Meta:
        ordering = ["job", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["job", "seq"], name="jobstep_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.seq}. {self.name}"
