"""Admin for campaigns: the list, each campaign's progress page, pause, resume, abandon.

The page is read-only (a campaign is changed only through its buttons, each a POST checked
against `instances.control_campaign` and audited) and refreshes every 2 s while the
campaign has not ended.
"""

from __future__ import annotations

from collections import Counter

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Min, Q, QuerySet
from django.http import HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import re_path, reverse
from django.utils import timezone

from elephaas.admin_security import ReadOnlyAdminMixin, refuse
from instances.admin.display import GREEN, GREY, ORANGE, RED, badge
from instances.admin.jobs import state_badge
from instances.audit import remote_addr
from instances.choices import CampaignKind, CampaignState, JobState
from instances.jobs import campaigns
from instances.models import Campaign

STATE_COLOURS = {
    CampaignState.RUNNING: "#0d6efd",
    CampaignState.PAUSED: ORANGE,
    CampaignState.HALTED: RED,
    CampaignState.SUCCEEDED: GREEN,
    CampaignState.FAILED: RED,
    CampaignState.ABANDONED: GREY,
}

# The kinds whose drill record lives in the herds admin (herds.admin.site_drills).
SITE_RECORD_URL = "admin:herds_drill_site_record"


def wall_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def campaign_badge(campaign: Campaign) -> str:
    return badge(campaign.get_state_display(), STATE_COLOURS.get(campaign.state, "#000"))


@admin.register(Campaign)
class CampaignAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "title",
        "kind",
        "state_column",
        "progress_column",
        "requested_by_name",
        "created_at",
        "wall_time",
    )
    list_display_links = ("id", "title")
    list_filter = ("state", "kind", "created_at")
    search_fields = ("title", "requested_by_name", "state_note")
    list_per_page = 100
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                # Jobs retried within the campaign are replaced by their retries.
                _jobs=Count("jobs", filter=Q(jobs__retries__isnull=True), distinct=True),
                _done=Count(
                    "jobs",
                    filter=Q(jobs__state=JobState.SUCCEEDED, jobs__retries__isnull=True),
                    distinct=True,
                ),
                _bad=Count(
                    "jobs",
                    filter=Q(
                        jobs__state__in=[JobState.FAILED, JobState.ERRORED, JobState.CANCELLED],
                        jobs__retries__isnull=True,
                    ),
                    distinct=True,
                ),
            )
        )

    @admin.display(description="state", ordering="state")
    def state_column(self, campaign: Campaign) -> str:
        return campaign_badge(campaign)

    @admin.display(description="progress")
    def progress_column(self, campaign: Campaign) -> str:
        text = f"{campaign._done}/{campaign._jobs} succeeded"
        return text + (f", {campaign._bad} not" if campaign._bad else "")

    @admin.display(description="wall time")
    def wall_time(self, campaign: Campaign) -> str:
        end = campaign.finished_at or timezone.now()
        return wall_seconds((end - campaign.created_at).total_seconds())

    def get_urls(self):
        own = [
            re_path(
                r"^(?P<campaign_id>[0-9]+)/(?P<verb>pause|resume|abandon)/$",
                self.admin_site.admin_view(self.control_view),
                name="instances_campaign_control",
            ),
        ]
        return own + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url="", extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        campaign = get_object_or_404(Campaign, pk=object_id)
        every = list(campaign.jobs.with_related().order_by("wave", "pk"))
        # A job retried within the campaign is replaced by its retry: listed, struck
        # through, never counted.
        retried = {j.retry_of_id: j.pk for j in every if j.retry_of_id}
        jobs = [j for j in every if j.pk not in retried]
        counts = Counter(j.state for j in jobs)
        held = sum(1 for j in jobs if j.held)
        ended = sum(counts[s] for s in JobState.terminal())
        span = campaign.jobs.aggregate(first=Min("started_at"), last=Max("finished_at"))
        can_control = request.user.has_perm("instances.control_campaign")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Campaign #{campaign.pk}: {campaign.title}",
            "campaign": campaign,
            "state_badge": campaign_badge(campaign),
            "jobs": [
                (j, state_badge("held" if j.held else j.state), retried.get(j.pk)) for j in every
            ],
            "counts": [
                (label, counts.get(value, 0))
                for value, label in JobState.choices
                if counts.get(value, 0)
            ],
            "held": held,
            "total": len(jobs),
            "ended": ended,
            "percent": int(100 * ended / len(jobs)) if jobs else 100,
            "waves": max((j.wave or 1 for j in jobs), default=0),
            "wall_time": wall_seconds(
                ((campaign.finished_at or timezone.now()) - campaign.created_at).total_seconds()
            ),
            "span": span,
            "auto_refresh": not campaign.is_terminal or not campaign.finished_at,
            "can_pause": can_control and campaign.state == CampaignState.RUNNING,
            "can_resume": can_control
            and campaign.state in (CampaignState.PAUSED, CampaignState.HALTED),
            "can_abandon": can_control and not campaign.is_terminal,
            "record_url": reverse(SITE_RECORD_URL, args=[campaign.pk])
            if campaign.kind in CampaignKind.site_drills()
            else "",
            "opts": self.model._meta,
            "left_out": campaign.params.get("left_out", []),
        }
        return TemplateResponse(request, "admin/instances/campaign/progress.html", context)

    def control_view(self, request: HttpRequest, campaign_id: str, verb: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        campaign = get_object_or_404(Campaign, pk=campaign_id)
        actions = {
            "pause": campaigns.pause,
            "resume": campaigns.resume,
            "abandon": campaigns.abandon,
        }
        if verb not in actions:
            raise PermissionDenied
        if not request.user.has_perm("instances.control_campaign"):
            refuse(request, f"{verb} of campaign #{campaign.pk}", "instances.control_campaign")
        message = actions[verb](campaign, request.user, remote=remote_addr(request))
        self.message_user(request, message, messages.INFO)
        return HttpResponseRedirect(reverse("admin:instances_campaign_change", args=[campaign.pk]))
