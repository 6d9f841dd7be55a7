"""Fleet maintenance in the admin: a rolling restart of the selected herds, as one
campaign (waves, a concurrency limit, the canary first, halt on the first failure).

No I/O here: the confirmation page says what each herd's job will do; each job checks its
herd live (herds.rolling_restart) and refuses, changing nothing, a herd in trouble.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse

from herds.admin.site_drills import CampaignOptionsForm, may_drill, refuse
from instances.audit import remote_addr
from instances.choices import CampaignKind, JobKind
from instances.jobs import campaigns


class RollingRestartForm(CampaignOptionsForm):
    field_order = ["mode", "only_pending", "concurrency", "canary"]

    mode = forms.ChoiceField(
        choices=[
            (
                "switchover",
                "switch over to a restarted replica (the old primary restarts as its "
                "replica: no outage beyond the switchover's write gap)",
            ),
            ("in_place", "restart the primary in place (clients see a restart's outage)"),
        ],
        initial="switchover",
        widget=forms.RadioSelect,
        label="The primary",
    )
    only_pending = forms.BooleanField(
        required=False,
        label="Only instances with a pending restart",
        help_text="An instance whose pg_settings show no pending_restart is left alone.",
    )


WHAT_HAPPENS = (
    "For each herd, as one campaign: its replicas are restarted one at a time (cascades "
    "first), each waited for until it streams again; then its primary, as chosen below. "
    "A herd whose primary or a replica does not answer is refused, changing nothing; the "
    "first herd that fails halts the campaign and the others wait for you to resume or "
    "abandon it."
)


def rolling_restart_action(modeladmin, request: HttpRequest, queryset):
    if not may_drill(request):
        refuse(request, "run a rolling restart")
    herds = list(queryset.select_related("environment").order_by("name"))
    confirmed = request.POST.get("confirm") == "yes"
    form = RollingRestartForm(request.POST if confirmed else None)
    if confirmed and form.is_valid():
        data = form.cleaned_data
        names = ", ".join(h.name for h in herds)
        campaign = campaigns.create(
            CampaignKind.ROLLING_RESTART,
            f"Rolling restart of {len(herds)} herd(s): {names}",
            [
                campaigns.Entry(
                    JobKind.ROLLING_RESTART,
                    herd,
                    {"mode": data["mode"], "only_pending": data["only_pending"]},
                )
                for herd in herds
            ],
            user=request.user,
            remote=remote_addr(request),
            concurrency=data["concurrency"],
            canary=data["canary"],
            params={"mode": data["mode"], "only_pending": data["only_pending"]},
        )
        modeladmin.message_user(
            request, f"Campaign #{campaign.pk} started: {campaign.title}", messages.SUCCESS
        )
        return HttpResponseRedirect(campaign.get_absolute_url())
    if not herds:
        raise PermissionDenied("no herd selected")
    rows = [
        (herd, [] if herd.vhost else ["no vhost: clients must follow the switch themselves"])
        for herd in herds
    ]
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Rolling restart",
        "what_happens": WHAT_HAPPENS,
        "rows": rows,
        "queryset": herds,
        "form": form,
        "action": request.POST.get("action", ""),
        "opts": modeladmin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/elephaas/confirm_jobs.html", context)
