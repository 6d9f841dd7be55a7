"""Admin actions that queue jobs: a confirmation page, then one job per target.

The admin never runs an operation itself: it validates, shows exactly which targets will be
touched and what will happen, creates the jobs (enqueued after the commit) and says which
jobs were queued, with a link to the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import transaction
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from instances.audit import remote_addr
from instances.jobs import queue as job_queue


@dataclass
class Confirmation:
    title: str
    what_happens: str
    rows: list[tuple[object, list[str]]]  # (target, warnings for it)
    warnings: list[str] = field(default_factory=list)


def confirm_and_queue(
    modeladmin: admin.ModelAdmin,
    request,
    queryset,
    *,
    kind: str,
    title: str,
    what_happens: str,
    describe: Callable[[object], list[str]] | None = None,
    params: dict | None = None,
    form_class=None,
    params_for: Callable[[object], dict] | None = None,
    template: str = "admin/elephaas/confirm_jobs.html",
    extra_context: dict | None = None,
) -> TemplateResponse | None:
    """First call: the confirmation page. Second call (POST with `confirm`): queue jobs.

    `form_class` adds options to the confirmation page (a stop mode, an explicit tick);
    its cleaned data becomes the jobs' params, and an invalid form shows the page again.
    """
    targets: Sequence = list(queryset)
    action = request.POST.get("action", "")
    confirmed = request.POST.get("confirm") == "yes"
    form = None
    if form_class is not None:
        form = form_class(request.POST if confirmed else None, targets=targets)
        if confirmed and not form.is_valid():
            confirmed = False
    if confirmed:
        chosen = {**(params or {}), **(form.cleaned_data if form is not None else {})}
        with transaction.atomic():
            created = job_queue.create_jobs(
                kind,
                targets,
                user=request.user,
                params=chosen,
                params_for=params_for,
                remote=remote_addr(request),
            )
        if created:
            url = (
                reverse("admin:instances_job_changelist")
                + "?"
                + urlencode({"batch": created[0].batch})
            )
            modeladmin.message_user(
                request,
                format_html(
                    '{} job(s) queued: {} — <a href="{}">follow the batch</a>.',
                    len(created),
                    ", ".join(f"#{j.pk} {j.target_label}" for j in created),
                    url,
                ),
                messages.SUCCESS,
            )
            waiting = [j for j in created if getattr(j, "sent", True) is False]
            if waiting:
                modeladmin.message_user(
                    request,
                    f"The broker did not answer within {settings.BROKER_PUBLISH_TIMEOUT:g} s: "
                    f"{len(waiting)} of these job(s) wait in the jobs table and will be sent "
                    "as soon as the broker answers (within a few seconds of it coming back). "
                    "Do not queue them again.",
                    messages.WARNING,
                )
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "what_happens": what_happens,
        "rows": [(t, describe(t) if describe else []) for t in targets],
        "queryset": targets,
        "form": form,
        "action": action,
        "opts": modeladmin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media,
        **(extra_context or {}),
    }
    return TemplateResponse(request, template, context)
