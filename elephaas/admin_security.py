"""Admin actions a user may not use are refused loudly, not ignored.

Django offers each user only the actions their permissions allow, but a POST naming
another action (a crafted request, a stale page after a role was taken away) only gets
"No action selected." back. An operator then cannot tell that something was refused, and
nobody learns that someone tried. With this mixin the request is answered 403 and the
attempt is written to the `elephaas.audit` logger.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

audit = logging.getLogger("elephaas.audit")


def refuse(request: HttpRequest, what: str, permission: str) -> None:
    """Answer 403 to a request lacking `permission`, and write the attempt to the audit
    log: for admin views that are not actions (the mixin below covers those)."""
    audit.warning(
        "%s refused: %r from %s lacks %s",
        what,
        request.user.get_username(),
        request.META.get("REMOTE_ADDR") or "-",
        permission,
    )
    raise PermissionDenied(f"You may not {what}.")


class AuditedActionsMixin:
    """Put before admin.ModelAdmin: `class JobAdmin(AuditedActionsMixin, admin.ModelAdmin)`."""

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "POST":
            self.refuse_unpermitted_action(request)
        return super().changelist_view(request, extra_context)

    def response_action(self, request: HttpRequest, queryset):
        # Also here for subclasses that call response_action from their own views.
        self.refuse_unpermitted_action(request)
        return super().response_action(request, queryset)

    def refuse_unpermitted_action(self, request: HttpRequest) -> None:
        # Every non-empty name counts, not only the one `index` picks: the form offers
        # permitted actions only, so an honest page never posts anything else.
        posted = [name for name in request.POST.getlist("action") if name]
        if not posted:
            return
        permitted = self.get_actions(request)
        refused = [name for name in posted if name not in permitted]
        if not refused:
            return
        meta = self.model._meta
        audit.warning(
            "action refused: %r from %s tried %s on %s.%s (selected: %r): not permitted",
            request.user.get_username(),
            request.META.get("REMOTE_ADDR") or "-",
            ", ".join(repr(name) for name in refused),
            meta.app_label,
            meta.model_name,
            request.POST.getlist("_selected_action")[:20],
        )
        raise PermissionDenied(f"You may not use the action {refused[0]!r} here.")
