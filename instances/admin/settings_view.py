"""The fleet's configuration as gathered: the fleet-wide search (Settings), an
instance's non-default settings on its page, and a herd's drift on the herd page.

Rows come from instances.settings_gather (the `gather_settings` beat task); nothing here
reads an instance. Only non-default settings are kept, so an instance without a row for a
name runs PostgreSQL's built-in default.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from elephaas.admin_security import ReadOnlyAdminMixin
from instances.admin.display import GREY, ORANGE, RED, badge
from instances.choices import Role
from instances.models import Instance, InstanceSetting
from instances.settings_drift import Seen, drift, parse_query

DRIFT_BG = "#fff3cd"
VALUE_SUMMARY_ROWS = 20


class SettingNameFilter(admin.SimpleListFilter):
    """By parameter name: the names the fleet actually sets (one query)."""

    title = "parameter"
    parameter_name = "name"

    def lookups(self, request, model_admin):
        names = InstanceSetting.objects.order_by("name").values_list("name", flat=True).distinct()
        return [(name, name) for name in names]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


@admin.register(InstanceSetting)
class InstanceSettingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: what the fleet's instances run with, searchable as `name = value`."""

    list_display = (
        "name",
        "value_column",
        "instance_link",
        "herd_column",
        "pending_column",
        "since",
    )
    list_display_links = None
    list_filter = (
        SettingNameFilter,
        "pending_restart",
        "source",
        "instance__herd__environment",
        "instance__herd",
    )
    search_fields = ("name", "shown", "instance__herd__name", "instance__server__hostname")
    search_help_text = (
        "A name, a value, a herd or a server; or a query such as "
        "“max_connections = 100” or “work_mem != 4MB” (the value as SHOW prints it, or in "
        "the parameter's base unit). Only non-default settings are gathered: an instance "
        "missing here runs PostgreSQL's built-in default."
    )
    list_select_related = ("instance__herd", "instance__server")
    list_per_page = 200
    ordering = ("name", "instance__herd__name", "instance__server__hostname")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        """With one parameter chosen (its filter, or a `name = value` search), a summary
        above the list: each value it has across the fleet and on how many instances, and
        how many gathered instances run the built-in default (three queries)."""
        query = parse_query(request.GET.get("q", ""))
        name = request.GET.get("name") or (query.name if query else "")
        extra_context = dict(extra_context or {})
        if name:
            counts = list(
                InstanceSetting.objects.filter(name=name)
                .values("shown")
                .annotate(n=Count("pk"), pending=Count("pk", filter=Q(pending_restart=True)))
                .order_by("-n", "shown")[:VALUE_SUMMARY_ROWS]
            )
            gathered = Instance.objects.filter(settings_seen_at__isnull=False).count()
            with_row = InstanceSetting.objects.filter(name=name).count()
            extra_context.update(
                value_counts=counts,
                value_counts_name=name,
                value_counts_default=max(0, gathered - with_row),
            )
        return super().changelist_view(request, extra_context)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        query = parse_query(search_term)
        if query is None:
            return super().get_search_results(request, queryset, search_term)
        same = Q(shown__iexact=query.value) | Q(setting__iexact=query.value)
        queryset = queryset.filter(name__iexact=query.name)
        return queryset.exclude(same) if query.negate else queryset.filter(same), False

    @admin.display(description="value", ordering="shown")
    def value_column(self, row: InstanceSetting) -> str:
        return format_html('<code title="source: {}">{}</code>', row.source, row.shown)

    @admin.display(description="instance", ordering="instance__server__hostname")
    def instance_link(self, row: InstanceSetting) -> str:
        url = reverse("admin:instances_instance_change", args=[row.instance_id])
        return format_html(
            '<a href="{}">{}</a> <span class="quiet">{}</span>',
            url,
            row.instance.address,
            row.instance.get_role_display(),
        )

    @admin.display(description="herd", ordering="instance__herd__name")
    def herd_column(self, row: InstanceSetting) -> str:
        return row.instance.herd.name

    @admin.display(description="restart", ordering="pending_restart")
    def pending_column(self, row: InstanceSetting) -> str:
        return badge("pending", ORANGE) if row.pending_restart else ""


def instance_settings_html(instance: Instance) -> str:
    """The instance page's table of its non-default settings (one query)."""
    if instance.pk is None:
        return "—"
    rows = list(instance.settings_seen.order_by("name"))
    when = instance.settings_seen_at
    if not rows:
        if when is None:
            return "Not gathered yet: settings are read from pg_settings at a low rate."
        return "Only PostgreSQL's built-in defaults."
    search = reverse("admin:instances_instancesetting_changelist")
    return format_html(
        '<div class="help">Read from pg_settings {}; only settings that are not the '
        "built-in default. Click a name to see it across the fleet.</div>"
        '<table id="instance-settings"><thead><tr><th>parameter</th><th>value</th>'
        "<th>source</th><th></th></tr></thead><tbody>{}</tbody></table>",
        when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else "—",
        format_html_join(
            "",
            '<tr><td><a href="{}?name={}">{}</a></td><td><code>{}</code></td><td>{}</td>'
            "<td>{}</td></tr>",
            (
                (
                    search,
                    row.name,
                    row.name,
                    row.shown,
                    row.source,
                    badge("restart pending", ORANGE) if row.pending_restart else "",
                )
                for row in rows
            ),
        ),
    )


def herd_drift_html(herd_id: int) -> str:
    """The herd page's drift table: each setting whose value is not the same on every
    member, the cells that differ from the primary highlighted (two queries)."""
    members = list(
        Instance.objects.filter(herd_id=herd_id)
        .select_related("server")
        .order_by("-role", "server__hostname", "port")
    )
    # The primary first: it is what the others are compared with.
    members.sort(key=lambda i: (i.role != Role.PRIMARY, i.server.hostname, i.port))
    if len(members) < 2:
        return "One member: nothing to compare."
    seen: dict[int, dict[str, Seen]] = {i.pk: {} for i in members}
    for row in InstanceSetting.objects.filter(instance__herd_id=herd_id).values(
        "instance_id", "name", "setting", "unit", "source", "pending_restart", "shown"
    ):
        pk = row.pop("instance_id")
        seen[pk][row["name"]] = Seen(**row)
    never = [i for i in members if i.settings_seen_at is None]
    rows = drift([seen[i.pk] for i in members])
    note = ""
    if never:
        note = format_html(
            '<div class="help">Not gathered yet on {}: compared as if it ran the defaults.</div>',
            ", ".join(i.address for i in never),
        )
    if not rows:
        return format_html(
            '{}{}<div class="help">Compared: every setting but each member\'s own '
            "(addresses, upstream, files).</div>",
            badge("✓ every member has the same settings", "#2e7d32"),
            note,
        )
    head = format_html_join(
        "",
        "<th>{}<br>{}</th>",
        ((i.address, badge(i.get_role_display(), GREY)) for i in members),
    )

    def cell(value: str | None, differs: bool, pending: bool) -> str:
        text = format_html("<code>{}</code>", value) if value is not None else "(default)"
        if pending:
            text = format_html("{} {}", text, badge("↻ restart pending", ORANGE))
        if differs:
            return format_html(
                '<td class="drift" style="background: {}; color: {}; font-weight: bold" '
                'title="differs from the primary">{}</td>',
                DRIFT_BG,
                RED,
                text,
            )
        return format_html("<td>{}</td>", text)

    body = format_html_join(
        "",
        "<tr><th>{}</th>{}</tr>",
        (
            (
                d.name,
                format_html_join(
                    "",
                    "{}",
                    (
                        (cell(v, x, p),)
                        for v, x, p in zip(d.values, d.differs, d.pending, strict=True)
                    ),
                ),
            )
            for d in rows
        ),
    )
    return format_html(
        '{}<table id="herd-drift"><thead><tr><th>parameter</th>{}</tr></thead>'
        "<tbody>{}</tbody></table>{}"
        '<div class="help">Highlighted: differs from the primary. Every setting but each '
        "member's own (addresses, upstream, files) is compared.</div>",
        badge(f"⚠ {len(rows)} setting(s) differ between members", ORANGE),
        head,
        body,
        note,
    )
