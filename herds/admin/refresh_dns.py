"""The Refresh DNS admin action: show where each herd's names point by the last record
and where the job will point them, then queue one job per herd.

Wired into HerdAdmin and DRPairAdmin through `RefreshDNSActionMixin` (add
"refresh_dns_herds" to their `actions`). The page never asks the DNS server (no I/O in a
request): what DNS answered comes from the herd's last Refresh DNS job, which read every
name back from the server; the change itself is made by the new job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.timesince import timesince

from herds import dns_records
from herds.models import Herd
from instances.admin.actions import confirm_and_queue
from instances.choices import JobKind, JobState
from instances.models import Instance, Job

PERMISSION = "herds.refresh_dns"

WHAT_HAPPENS = (
    "Re-apply each selected herd's DNS records from the inventory: its vhost to its online "
    "primary, its read-only vhost to its online replicas (deleted when none is online). "
    "Each change is one TSIG-signed update, then checked against the DNS server. A herd "
    "with no online primary, a fenced one, or two online primaries (split brain) is "
    "refused and its names are left as they are."
)


def last_refreshes(herds: Iterable[Herd]) -> dict[int, Job]:
    """The latest ended Refresh DNS job of each herd, in one query (DISTINCT ON)."""
    return {
        job.herd_id: job
        for job in Job.objects.filter(
            herd__in=list(herds), kind=JobKind.REFRESH_DNS, state__in=JobState.terminal()
        )
        .order_by("herd_id", "-finished_at", "-pk")
        .distinct("herd_id")
    }


def _recorded(job: Job | None, name: str) -> str:
    """What the last refresh recorded for `name`, said with its age and outcome."""
    if job is None:
        return "no Refresh DNS recorded yet"
    when = (
        f"job #{job.pk}, {timesince(job.finished_at, timezone.now())} ago"
        if (job.finished_at)
        else f"job #{job.pk}"
    )
    if job.state != JobState.SUCCEEDED:
        return f"last refresh {job.state} ({when}): {job.error or 'no reason recorded'}"
    full = dns_records.fqdn(name)
    for line in job.summary.splitlines():
        if line.startswith(full + " "):
            return f"{line} (recorded by {when})"
    return f"not changed by the last refresh ({when})"


def describer(recorded: dict[int, Job]) -> Callable[[Herd], list[str]]:
    """One line per name: what the last refresh recorded and what the job will write."""

    def describe(herd: Herd) -> list[str]:
        desired = dns_records.desired_records(herd)
        job = recorded.get(herd.pk)
        notes = []
        for label, name, will in (
            (
                "vhost",
                herd.vhost,
                f"nothing: refused ({desired['refusal']})"
                if desired["refusal"]
                else desired["primary"],
            ),
            (
                "read-only vhost",
                herd.ro_vhost,
                ", ".join(desired["replicas"]) or "no record (no online replica)",
            ),
        ):
            if not name:
                continue
            try:
                last = _recorded(job, name)
            except dns_records.DNSNameError as exc:
                last = f"cannot be updated: {exc}"
            verb = "point to" if label == "vhost" else "list"
            notes.append(f"{label} {name}: {last}; will {verb} {will}")
        if not notes:
            notes.append("no vhost nor read-only vhost: the job will have nothing to do")
        return notes

    return describe


def refresh_dns_action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet):
    """Confirmation page (per herd: vhost, DNS's answer now, target), then one job per herd."""
    if not request.user.has_perm(PERMISSION):
        # The action is offered only with the permission; a crafted POST still stops here.
        raise PermissionDenied("You may not refresh DNS records.")
    herds = list(
        queryset.select_related("environment").prefetch_related(
            Prefetch("instances", queryset=Instance.objects.select_related("server"))
        )
    )
    return confirm_and_queue(
        modeladmin,
        request,
        herds,
        kind=JobKind.REFRESH_DNS,
        title="Refresh DNS of the selected herds",
        what_happens=WHAT_HAPPENS,
        describe=describer(last_refreshes(herds)),
    )


class RefreshDNSActionMixin:
    """Put before admin.ModelAdmin and add "refresh_dns_herds" to `actions`."""

    @admin.action(description="Refresh DNS of selected herds", permissions=["refresh_dns"])
    def refresh_dns_herds(self, request: HttpRequest, queryset: QuerySet[Herd]):
        return refresh_dns_action(self, request, queryset)

    def has_refresh_dns_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSION)
