"""The Refresh DNS admin action: show what DNS answers now and where it will point, then
queue one job per herd.

Wired into HerdAdmin and DRPairAdmin through `RefreshDNSActionMixin` (add
"refresh_dns_herds" to their `actions`). The confirmation page asks the DNS server
directly, through the DNS boundary (herds.dns); the change itself is made by the job.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest

from herds import dns
from herds.models import Herd
from instances.admin_actions import confirm_and_queue
from instances.models import Instance, JobKind

PERMISSION = "herds.refresh_dns"
# The confirmation page asks the DNS server about each selected name; beyond this many it
# stops asking, so that selecting a whole fleet still shows the page in seconds.
LOOKUP_LIMIT = 40

WHAT_HAPPENS = (
    "Re-apply each selected herd's DNS records from the inventory: its vhost to its online "
    "primary, its read-only vhost to its online replicas (deleted when none is online). "
    "Each change is one TSIG-signed update, then checked against the DNS server. A herd "
    "with no online primary, a fenced one, or two online primaries (split brain) is "
    "refused and its names are left as they are."
)


def describer() -> Callable[[Herd], list[str]]:
    """One line per name: what DNS answers now and what the job will write.

    Lookups stop after the first unreachable-server error (each would wait DNS_TIMEOUT)
    and after LOOKUP_LIMIT names.
    """
    state = {"asked": 0, "server_problem": ""}

    def answer(name: str) -> str:
        if state["server_problem"]:
            return "not asked (the DNS server did not answer an earlier lookup)"
        if state["asked"] >= LOOKUP_LIMIT:
            return f"not asked (only the first {LOOKUP_LIMIT} names are looked up)"
        state["asked"] += 1
        try:
            found = dns.lookup(name)
        except dns.DNSNameError as exc:
            return f"cannot be updated: {exc}"
        except dns.DNSError as exc:
            state["server_problem"] = str(exc)
            return f"lookup failed: {exc}"
        return ", ".join(found) if found else "no record"

    def describe(herd: Herd) -> list[str]:
        desired = dns.desired_records(herd)
        notes = []
        if herd.vhost:
            if desired["refusal"]:
                target = f"nothing: refused ({desired['refusal']})"
            else:
                target = desired["primary"]
            notes.append(
                f"vhost {herd.vhost}: DNS answers {answer(herd.vhost)}; will point to {target}"
            )
        if herd.ro_vhost:
            replicas = ", ".join(desired["replicas"]) or "no record (no online replica)"
            notes.append(
                f"read-only vhost {herd.ro_vhost}: DNS answers {answer(herd.ro_vhost)}; "
                f"will list {replicas}"
            )
        if not notes:
            notes.append("no vhost nor read-only vhost: the job will have nothing to do")
        return notes

    return describe


def refresh_dns_action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet):
    """Confirmation page (per herd: vhost, DNS's answer now, target), then one job per herd."""
    if not request.user.has_perm(PERMISSION):
        # The action is offered only with the permission; a crafted POST still stops here.
        raise PermissionDenied("You may not refresh DNS records.")
    herds = queryset.select_related("environment").prefetch_related(
        Prefetch("instances", queryset=Instance.objects.select_related("server"))
    )
    return confirm_and_queue(
        modeladmin,
        request,
        herds,
        kind=JobKind.REFRESH_DNS,
        title="Refresh DNS of the selected herds",
        what_happens=WHAT_HAPPENS,
        describe=describer(),
    )


class RefreshDNSActionMixin:
    """Put before admin.ModelAdmin and add "refresh_dns_herds" to `actions`."""

    @admin.action(description="Refresh DNS of selected herds", permissions=["refresh_dns"])
    def refresh_dns_herds(self, request: HttpRequest, queryset: QuerySet[Herd]):
        return refresh_dns_action(self, request, queryset)

    def has_refresh_dns_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSION)
