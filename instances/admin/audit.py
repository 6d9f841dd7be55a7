"""Admin for the audit trail: read-only for everyone, searchable, filtered by verb, kind
of object, person and date.

Every column is on the row itself (no foreign key to follow) and every filter's choices
are fixed or come from the small users table, so the list costs the same few queries for
ten rows as for a million (tests/elephaas/test_audit.py holds this).
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils.html import format_html

from elephaas.admin_security import ReadOnlyAdminMixin
from instances.admin.display import GREY, ORANGE, RED, badge
from instances.choices import AuditVerb
from instances.models import AuditEvent

# The kinds of object events name, as the object filter offers them.
OBJECT_TYPES = {
    "instances.server": "server",
    "instances.instance": "instance",
    "herds.herd": "herd",
    "herds.environment": "environment",
    "herds.drcandidate": "DR candidate",
    "instances.job": "job",
    "instances.campaign": "campaign",
    "auth.user": "user",
}
# Beyond this many accounts the person filter stops listing them: search by name instead.
USER_FILTER_LIMIT = 100


def verb_colour(verb: str) -> str:
    if verb in AuditVerb.refusals():
        return RED
    if verb in AuditVerb.inventory_edits():
        return ORANGE
    if verb in (AuditVerb.LOGIN, AuditVerb.LOGOUT):
        return GREY
    return "#0d6efd"


class ObjectTypeFilter(admin.SimpleListFilter):
    title = "object"
    parameter_name = "object_type"

    def lookups(self, request, model_admin):
        return list(OBJECT_TYPES.items())

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(object_type=self.value())
        return queryset


class UsernameFilter(admin.SimpleListFilter):
    """Who: the accounts ElepHaaS knows (a refused stranger is found by searching)."""

    title = "who"
    parameter_name = "username"

    def lookups(self, request, model_admin):
        names = get_user_model().objects.order_by("username").values_list("username", flat=True)
        return [(name, name) for name in names[:USER_FILTER_LIMIT]]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(username=self.value())
        return queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("at", "username", "remote", "verb_badge", "object_link", "message")
    list_display_links = ("at",)
    list_filter = ("verb", ObjectTypeFilter, UsernameFilter, "at")
    search_fields = ("username", "remote", "object_repr", "message")
    # Nothing to join: who, where and the object's name are kept on the row as text.
    list_select_related = ()
    list_per_page = 100
    # One count of the filtered rows, not a second one of the whole table, and no count
    # per filter choice (each a scan of the table).
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = None
    fields = (
        "at",
        "username",
        "remote",
        "verb",
        "object_type",
        "object_id",
        "object_link",
        "message",
        "changes_table",
    )
    readonly_fields = fields

    @admin.display(description="what", ordering="verb")
    def verb_badge(self, event: AuditEvent) -> str:
        return badge(event.get_verb_display(), verb_colour(event.verb))

    @admin.display(description="object")
    def object_link(self, event: AuditEvent) -> str:
        kind = OBJECT_TYPES.get(event.object_type, event.object_type)
        name = event.object_repr or (f"#{event.object_id}" if event.object_id else "")
        if not kind:
            return "—"
        url = event.object_url
        if url:
            return format_html('{} <a href="{}">{}</a>', kind, url, name)
        return format_html("{} {}", kind, name)

    @admin.display(description="changes")
    def changes_table(self, event: AuditEvent) -> str:
        if not event.changes:
            return "—"
        rows = format_html("<tr><th>field</th><th>before</th><th>after</th></tr>")
        for name, (old, new) in event.changes.items():
            rows += format_html(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                name,
                "—" if old is None else old,
                "—" if new is None else new,
            )
        return format_html("<table>{}</table>", rows)
