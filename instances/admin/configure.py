"""Change a setting on many instances: the DBA gives a parameter and a value; the page
checks it live against each instance's own pg_settings (instances.settings_check) and says
per instance "a reload is enough", "needs a restart", or why it is refused. Nothing is
queued unless every instance accepts it; each job checks again before it changes anything.
Undo (on the jobs list) is the same change with the old values the jobs recorded.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.http import HttpRequest
from django.template.response import TemplateResponse

from elephaas import admin_security
from instances import settings_check
from instances.audit import remote_addr
from instances.choices import JobKind, JobState
from instances.jobs import queue as job_queue
from instances.models import Instance
from instances.settings_planning import check_name

PERMISSION = "instances.configure_instance"


class SettingForm(forms.Form):
    name = forms.CharField(max_length=63, label="Parameter", help_text="e.g. work_mem")
    value = forms.CharField(
        max_length=4096, label="Value", strip=False, help_text="e.g. 64MB, on, 'text'"
    )

    def clean_name(self) -> str:
        try:
            return check_name(self.cleaned_data["name"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


def refuse(request: HttpRequest, what: str) -> None:
    admin_security.refuse(request, what, PERMISSION)


@admin.action(description="Change a setting of selected instances", permissions=["configure"])
def change_setting_action(modeladmin, request: HttpRequest, queryset):
    if not request.user.has_perm(PERMISSION):
        refuse(request, "change settings")
    targets = list(queryset.select_related("herd", "server").order_by("herd__name", "pk"))
    return change_setting(modeladmin, request, [t.pk for t in targets], targets)


@admin.action(
    description="Change a setting on every member of selected herds", permissions=["configure"]
)
def change_herd_setting_action(modeladmin, request: HttpRequest, queryset):
    """The same change on every unfenced member of each selected herd (a fenced one is out
    of its herd until it is rebuilt, and stopped: it would refuse the whole change)."""
    if not request.user.has_perm(PERMISSION):
        refuse(request, "change settings")
    selected = [h.pk for h in queryset]
    targets = list(
        Instance.objects.filter(herd_id__in=selected, fenced=False)
        .select_related("herd", "server")
        .order_by("herd__name", "pk")
    )
    return change_setting(modeladmin, request, selected, targets)


def change_setting(modeladmin, request: HttpRequest, selected: list, targets: list):
    """The page of both actions: `selected` are the rows ticked on the list (instances or
    herds, posted back as they came), `targets` the instances the change is for."""
    form = SettingForm(request.POST if "name" in request.POST else None)
    checked, error = [], ""
    if form.is_bound and form.is_valid():
        name, value = form.cleaned_data["name"], form.cleaned_data["value"]
        checked = settings_check.check_all(targets, name, value)
        refused = [(i, v) for i, v, _ in checked if not v.ok]
        if request.POST.get("confirm") == "yes":
            if refused:
                error = f"{len(refused)} instance(s) refuse it now: nothing was queued."
            else:
                created = job_queue.create_jobs(
                    JobKind.SET_PARAMETER,
                    targets,
                    user=request.user,
                    params={"name": name, "value": value},
                    remote=remote_addr(request),
                )
                restart = sum(1 for _, v, _ in checked if v.restart)
                modeladmin.message_user(
                    request,
                    f"{len(created)} job(s) queued to set {name} = {value!r}"
                    + (f"; {restart} will need a restart (pending restart)" if restart else ""),
                    messages.SUCCESS,
                )
                return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Change a setting",
        "targets": targets,
        "selected": selected,
        "checked": checked,
        "all_ok": bool(checked) and all(v.ok for _, v, _ in checked),
        "error": error,
        "form": form,
        "action": request.POST.get("action", ""),
        "opts": modeladmin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/instances/confirm_setting.html", context)


def has_configure_permission(self, request: HttpRequest) -> bool:
    return request.user.has_perm(PERMISSION)


@admin.action(description="Undo selected setting changes (set the old values back)")
def undo_setting_action(modeladmin, request: HttpRequest, queryset) -> None:
    if not request.user.has_perm(PERMISSION):
        refuse(request, "undo setting changes")
    jobs = [
        j
        for j in queryset.filter(kind=JobKind.SET_PARAMETER, state=JobState.SUCCEEDED)
        if "previous" in j.params and j.instance_id
    ]
    if not jobs:
        modeladmin.message_user(
            request,
            "No succeeded setting change with a recorded old value selected.",
            messages.ERROR,
        )
        return
    for job in jobs:
        job_queue.create_jobs(
            JobKind.SET_PARAMETER,
            [job.instance],
            user=request.user,
            params={"name": job.params["name"], "value": job.params["previous"], "undo_of": job.pk},
            remote=remote_addr(request),
        )
    modeladmin.message_user(
        request,
        f"{len(jobs)} undo job(s) queued (the old values, checked again).",
        messages.SUCCESS,
    )
