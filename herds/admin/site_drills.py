"""Site drills in the admin: "Move to DR site" (from herds, DR pairs or environments),
"Fail back" (from a site drill's record), and the record itself (printable, CSV, JSON).

The confirmation page shows each herd's target, plan and pre-flight gates, checked live
(herds.site_drill); confirming checks them again and starts one campaign of switchovers
of the herds that pass. A herd that fails a gate stops the whole drill unless the DBA
ticks "leave out the herds that fail a gate".
"""

from __future__ import annotations

import csv
import json

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from elephaas import admin_security
from herds import site_drill, site_report
from herds.models import Herd
from instances.audit import remote_addr
from instances.choices import CampaignKind
from instances.models import Campaign


class CampaignOptionsForm(forms.Form):
    """What every campaign of herds asks: how many at once, and the canary."""

    concurrency = forms.IntegerField(
        min_value=1,
        max_value=50,
        initial=settings.SITE_DRILL_CONCURRENCY,
        label="At most this many herds at once",
    )
    canary = forms.BooleanField(
        required=False,
        initial=True,
        label="Canary first",
        help_text="The first herd alone, and the others only once it succeeded.",
    )


class SiteDrillForm(CampaignOptionsForm):
    leave_out = forms.BooleanField(
        required=False,
        label="Leave out the herds that fail a gate",
        help_text="Otherwise one failing gate stops the whole drill.",
    )


def may_drill(request: HttpRequest) -> bool:
    return request.user.has_perm("herds.switchover_herd")


def refuse(request: HttpRequest, what: str) -> None:
    admin_security.refuse(request, what, "herds.switchover_herd")


def site_drill_page(
    modeladmin,
    request: HttpRequest,
    herds: list[Herd],
    *,
    kind: str,
    title: str,
    targets: dict,
    reverse_of: Campaign | None = None,
    selection: list | None = None,
):
    """The confirmation page, or (POST with confirm) the campaign and a redirect to it."""
    if not may_drill(request):
        refuse(request, "run a site drill")
    confirmed = request.POST.get("confirm") == "yes"
    form = SiteDrillForm(request.POST if confirmed else None)
    error = ""
    checks = site_drill.check(herds, targets)
    if confirmed and form.is_valid():
        passed = [c for c in checks if c.ok]
        failing = [c for c in checks if not c.ok]
        if not passed:
            error = "No herd passes its gates now: nothing started."
        elif failing and not form.cleaned_data["leave_out"]:
            names = ", ".join(c.herd.name for c in failing)
            error = (
                f"{len(failing)} herd(s) fail a gate now ({names}): nothing started. "
                "Fix them, or tick “leave out the herds that fail a gate”."
            )
        else:
            campaign = site_drill.start(
                kind,
                checks,
                user=request.user,
                remote=remote_addr(request),
                concurrency=form.cleaned_data["concurrency"],
                canary=form.cleaned_data["canary"],
                reverse_of=reverse_of,
            )
            modeladmin.message_user(
                request,
                f"Campaign #{campaign.pk} started: {campaign.title}"
                + (f" ({len(failing)} left out)" if failing else ""),
                messages.SUCCESS,
            )
            return HttpResponseRedirect(campaign.get_absolute_url())
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "checks": checks,
        "passing": sum(1 for c in checks if c.ok),
        "form": form,
        "error": error,
        "selection": selection or [],
        "action": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "opts": modeladmin.model._meta,
        "reverse_of": reverse_of,
    }
    return TemplateResponse(request, "admin/herds/confirm_site_drill.html", context)


def move_to_dr_site(modeladmin, request: HttpRequest, herds: list[Herd], selection: list):
    return site_drill_page(
        modeladmin,
        request,
        herds,
        kind=CampaignKind.SITE_SWITCHOVER,
        title="Move to DR site",
        targets={},
        selection=selection,
    )


def failback_view(modeladmin, request: HttpRequest, campaign_id: int):
    source = get_object_or_404(Campaign, pk=campaign_id, kind__in=CampaignKind.site_drills())
    if not source.is_terminal:
        modeladmin.message_user(
            request,
            f"Campaign #{source.pk} has not ended ({source.get_state_display()}): fail back "
            "once it has (abandon it first if it halted).",
            messages.ERROR,
        )
        return HttpResponseRedirect(source.get_absolute_url())
    targets = site_drill.failback_targets(source)
    herds = list(Herd.objects.filter(pk__in=targets).select_related("environment"))
    order = list(targets)
    herds.sort(key=lambda h: order.index(h.pk))
    if not herds:
        modeladmin.message_user(
            request, f"Campaign #{source.pk} moved no herd: nothing to fail back.", messages.ERROR
        )
        return HttpResponseRedirect(source.get_absolute_url())
    return site_drill_page(
        modeladmin,
        request,
        herds,
        kind=CampaignKind.FAILBACK,
        title=f"Fail back the herds of campaign #{source.pk}",
        targets=targets,
        reverse_of=source,
    )


def record_view(modeladmin, request: HttpRequest, campaign_id: int, fmt: str = "html"):
    if not request.user.has_perm("instances.view_campaign"):
        raise PermissionDenied
    campaign = get_object_or_404(Campaign, pk=campaign_id, kind__in=CampaignKind.site_drills())
    record = site_report.as_dict(campaign)
    if fmt == "json":
        response = JsonResponse(record, json_dumps_params={"indent": 2})
        response["Content-Disposition"] = f'attachment; filename="site-drill-{campaign.pk}.json"'
        return response
    if fmt == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="site-drill-{campaign.pk}.csv"'
        writer = csv.writer(response)
        for row in site_report.csv_rows(record):
            writer.writerow(row)
        return response
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Site drill record: campaign #{campaign.pk}",
        "campaign": campaign,
        "record": record,
        "record_json": json.dumps(record["totals"]),
        "can_failback": may_drill(request)
        and campaign.kind == CampaignKind.SITE_SWITCHOVER
        and campaign.is_terminal
        and any(h["state"] == "succeeded" for h in record["herds"]),
        "auto_refresh": not campaign.finished_at,
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/herds/site_drill_record.html", context)


def failback_url(campaign: Campaign) -> str:
    return reverse("admin:herds_drill_site_failback", args=[campaign.pk])
