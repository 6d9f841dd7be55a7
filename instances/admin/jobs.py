"""Admin for jobs: the list, the job page with its steps, cancel and retry."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from elephaas.admin_security import AuditedActionsMixin, ReadOnlyAdminMixin
from instances.audit import record_request, remote_addr, username_of
from instances.choices import AuditVerb
from instances.jobs import campaigns
from instances.jobs import queue as job_queue
from instances.jobs.registry import JobFailed
from instances.models import Job, JobState, JobStep

STATE_COLOURS = {
    JobState.QUEUED: "#6c757d",
    JobState.RUNNING: "#0d6efd",
    JobState.SUCCEEDED: "#198754",
    JobState.FAILED: "#dc3545",
    JobState.CANCELLED: "#b58900",
    # A bug, not a refusal: its own colour so that a DBA reads it differently.
    JobState.ERRORED: "#6f42c1",
}


def state_badge(state: str) -> str:
    return format_html('<b style="color:{}">{}</b>', STATE_COLOURS.get(state, "#000"), state)


def recent_jobs_html(queryset: QuerySet, limit: int = 10) -> str:
    """A small table of the latest jobs on a server, herd or instance page."""
    rows = list(queryset.order_by("-created_at")[:limit])
    if not rows:
        return "No jobs yet."
    body = format_html_join(
        "",
        '<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "<td>{}</td></tr>",
        (
            (
                j.get_absolute_url(),
                j.pk,
                j.get_kind_display(),
                state_badge(j.state),
                j.requested_by_name,
                j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                (j.error or j.summary.split("\n")[0])[:120],
            )
            for j in rows
        ),
    )
    return format_html(
        "<table><tr><th>job</th><th>kind</th><th>state</th><th>by</th>"
        "<th>queued</th><th>result</th></tr>{}</table>",
        body,
    )


class JobStepInline(admin.TabularInline):
    model = JobStep
    extra = 0
    can_delete = False
    fields = ["seq", "name", "host", "command", "exit_status", "ok", "seconds", "output_pre"]
    readonly_fields = fields

    @admin.display(description="seconds")
    def seconds(self, step: JobStep) -> str:
        return "" if step.duration is None else f"{step.duration:.3f}"

    @admin.display(description="output")
    def output_pre(self, step: JobStep) -> str:
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', step.output)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdminMixin, AuditedActionsMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "target_label",
        "state_colour",
        "requested_by_name",
        "origin",
        "created_at",
        "duration_s",
        "progress",
        "result",
    ]
    list_display_links = ["id", "kind"]
    list_filter = [
        "state",
        "kind",
        "origin",
        ("requested_by", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["target_label", "requested_by_name", "error", "summary"]
    list_select_related = ["requested_by"]
    list_per_page = 100
    date_hierarchy = "created_at"
    inlines = [JobStepInline]
    actions = ["cancel_jobs", "retry_jobs", "undo_settings"]
    readonly_fields = [
        "kind",
        "state_colour",
        "target_link",
        "batch_link",
        "requested_by_name",
        "origin",
        "params",
        "created_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "duration_s",
        "progress",
        "summary_pre",
        "error",
        "traceback_pre",
        "task_id",
        "sent_at",
        "worker",
        "cancel_requested",
        "cancel_requested_by",
        "retry_of",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "kind",
                    "state_colour",
                    "target_link",
                    "batch_link",
                    "requested_by_name",
                    "origin",
                    "params",
                    "progress",
                ]
            },
        ),
        ("Result", {"fields": ["summary_pre", "error", "traceback_pre"]}),
        (
            "Timing",
            {"fields": ["created_at", "started_at", "finished_at", "heartbeat_at", "duration_s"]},
        ),
        (
            "Worker",
            {
                "classes": ["collapse"],
                "fields": [
                    "task_id",
                    "sent_at",
                    "worker",
                    "cancel_requested",
                    "cancel_requested_by",
                    "retry_of",
                ],
            },
        ),
    ]

    @admin.display(description="state", ordering="state")
    def state_colour(self, job: Job) -> str:
        if job.state == JobState.QUEUED and job.dispatch_note:
            return format_html("{} — {}", state_badge(job.state), job.dispatch_note)
        return state_badge(job.state)

    @admin.display(description="seconds")
    def duration_s(self, job: Job) -> str:
        return "" if job.duration is None else f"{job.duration:.1f}"

    @admin.display(description="result")
    def result(self, job: Job) -> str:
        return (job.error or job.summary.split("\n")[0])[:140]

    @admin.display(description="summary")
    def summary_pre(self, job: Job) -> str:
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', job.summary)

    @admin.display(description="traceback")
    def traceback_pre(self, job: Job) -> str:
        return format_html("<pre>{}</pre>", job.traceback) if job.traceback else "-"

    @admin.display(description="target")
    def target_link(self, job: Job) -> str:
        target = job.target
        if target is None:
            return job.target_label
        meta = target._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[target.pk])
        return format_html('<a href="{}">{}</a> ({})', url, job.target_label, meta.verbose_name)

    @admin.display(description="batch")
    def batch_link(self, job: Job) -> str:
        url = reverse("admin:instances_job_changelist") + "?" + urlencode({"batch": job.batch})
        return format_html('<a href="{}">{}</a>', url, job.batch)

    def changelist_view(self, request, extra_context=None):
        # A batch page (?batch=…) refreshes itself while any of its jobs is still active.
        batch = request.GET.get("batch", "")
        active = False
        if batch:
            try:
                active = Job.objects.filter(batch=batch, state__in=JobState.active()).exists()
            except (ValueError, ValidationError):
                active = False
        extra_context = {**(extra_context or {}), "auto_refresh": active}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = Job.objects.filter(pk=object_id).only("state").first()
        extra_context = {**(extra_context or {}), "auto_refresh": bool(job and not job.is_terminal)}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset: QuerySet) -> None:
        # cancel_job covers one's own jobs only; cancel_any_job (DBAs) everyone's.
        any_job = request.user.has_perm("instances.cancel_any_job")
        remote = remote_addr(request)
        for job in queryset:
            if not any_job and job.requested_by_id != request.user.pk:
                record_request(
                    request,
                    AuditVerb.ACTION_REFUSED,
                    f"cancel of job #{job.pk} refused: {username_of(request.user)!r} from "
                    f"{remote} may cancel only their own jobs (it was queued by "
                    f"{job.requested_by_name!r})",
                    obj=job,
                )
                self.message_user(
                    request,
                    f"Job #{job.pk} was queued by {job.requested_by_name or 'someone else'}: "
                    "you may cancel only your own jobs.",
                    messages.ERROR,
                )
                continue
            self.message_user(request, job_queue.cancel(job, request.user, remote=remote))
            if job.campaign_id:
                campaigns.advance(job.campaign_id, remote=remote)

    @admin.action(description="Retry selected failed or cancelled jobs", permissions=["retry"])
    def retry_jobs(self, request, queryset: QuerySet) -> None:
        for job in queryset.with_related():
            try:
                new = campaigns.retry(job, request.user, remote=remote_addr(request))
            except JobFailed as exc:
                self.message_user(request, str(exc), messages.WARNING)
            else:
                self.message_user(
                    request,
                    format_html(
                        'Job #{} queued again as <a href="{}">#{}</a>.',
                        job.pk,
                        new.get_absolute_url(),
                        new.pk,
                    ),
                )

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("instances.cancel_job") or request.user.has_perm(
            "instances.cancel_any_job"
        )

    @admin.action(
        description="Undo selected setting changes (set the old values back)",
        permissions=["configure"],
    )
    def undo_settings(self, request, queryset: QuerySet) -> None:
        from instances.admin.configure import undo_setting_action

        undo_setting_action(self, request, queryset)

    def has_configure_permission(self, request) -> bool:
        return request.user.has_perm("instances.configure_instance")

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("instances.retry_job")
