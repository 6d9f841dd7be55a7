"""Admin for environments, herds and DR pairs.

List pages read only annotated or prefetched data, so they cost the same number of
queries for 10 herds as for 10,000 (tests/herds/test_admin.py).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Prefetch, Q, QuerySet
from django.http import HttpRequest
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from elephaas.admin_security import AuditedActionsMixin, ReadOnlyAdminMixin
from herds import dns_records, endpoints
from herds.admin import topology
from herds.admin.refresh_dns import RefreshDNSActionMixin
from herds.models import DRCandidate, Drill, DRPair, Environment, Herd
from instances.admin import display
from instances.admin.display import RED, badge, online_badge
from instances.models import Instance, Role, Server, correlated_count
from instances.wal import format_bytes


@admin.register(Environment)
class EnvironmentAdmin(AuditedActionsMixin, admin.ModelAdmin):
    list_display = ("name", "description", "herd_count", "server_count")
    actions = ("move_to_dr_site",)
    list_filter = ()
    search_fields = ("name", "description")
    list_select_related = ()
    list_per_page = 100

    def get_queryset(self, request: HttpRequest) -> QuerySet[Environment]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _herd_count=correlated_count(Herd.objects.all(), "environment"),
                _server_count=correlated_count(Server.objects.all(), "environment"),
            )
        )

    @admin.action(
        description="Move to DR site: switch every herd of the selected environments over "
        "to its DR copy",
        permissions=["switchover"],
    )
    def move_to_dr_site(self, request: HttpRequest, queryset: QuerySet[Environment]):
        from herds.admin.site_drills import move_to_dr_site

        herds = list(
            Herd.objects.filter(environment__in=queryset)
            .select_related("environment")
            .order_by("environment__name", "name")
        )
        if not herds:
            self.message_user(request, "The selected environments have no herd.", messages.ERROR)
            return None
        return move_to_dr_site(
            self, request, herds, request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        )

    def has_switchover_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("herds.switchover_herd")

    @admin.display(description="herds", ordering="_herd_count")
    def herd_count(self, environment: Environment) -> int:
        return environment._herd_count

    @admin.display(description="servers", ordering="_server_count")
    def server_count(self, environment: Environment) -> int:
        return environment._server_count


def split_brain_flag(herd: Herd) -> str:
    if not herd.split_brain:
        return ""
    return badge(f"SPLIT-BRAIN: {herd.online_primaries} online primaries", RED)


class InstanceInline(admin.TabularInline):
    """The herd's instances, read-only: topology is edited on each instance's own page."""

    model = Instance
    fk_name = "herd"
    fields = ("server", "port", "role", "upstream", "online", "lag_bytes", "last_checked")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("role", "server__hostname")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Instance]:
        return (
            super()
            .get_queryset(request)
            .select_related("herd", "server", "upstream__herd", "upstream__server")
        )


class DRCandidateInline(admin.TabularInline):
    """Acknowledge which replicas may be promoted in a DR failover; the author is recorded."""

    model = DRCandidate
    fields = ("instance", "priority", "note", "acknowledged_by", "acknowledged_at")
    readonly_fields = ("acknowledged_by", "acknowledged_at")
    extra = 0
    verbose_name_plural = "DR candidates (replicas acknowledged for DR failover)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[DRCandidate]:
        return (
            super()
            .get_queryset(request)
            .select_related("instance__herd", "instance__server", "acknowledged_by")
        )

    def formfield_for_foreignkey(self, db_field, request: HttpRequest, **kwargs):
        if db_field.name == "instance":
            herd_id = request.resolver_match.kwargs.get("object_id") if request else None
            # Only this herd's replicas can be candidates; on the add page there are none.
            # An existing candidate stays listed even if it is no longer a replica (after
            # a failover), so that DRCandidate.clean() can say why it must be withdrawn.
            herd_id = herd_id if herd_id and herd_id.isdigit() else None
            kwargs["queryset"] = (
                Instance.objects.filter(herd_id=herd_id)
                .filter(Q(role=Role.REPLICA) | Q(dr_candidacy__isnull=False))
                .select_related("herd", "server")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class DrillActionsMixin(RefreshDNSActionMixin):
    """Switchover, failover and DNS refresh on herds and DR pairs; each declares its
    permission."""

    actions = (
        "switchover_herds",
        "failover_herds",
        "move_to_dr_site",
        "rolling_restart",
        "change_setting_herds",
        "refresh_dns_herds",
    )

    @admin.action(description="Planned switchover of selected herds", permissions=["switchover"])
    def switchover_herds(self, request: HttpRequest, queryset: QuerySet[Herd]):
        from herds.admin.drills import switchover_action

        return switchover_action(self, request, queryset)

    @admin.action(description="DR failover of selected herds", permissions=["failover"])
    def failover_herds(self, request: HttpRequest, queryset: QuerySet[Herd]):
        from herds.admin.drills import failover_action

        return failover_action(self, request, queryset)

    @admin.action(
        description="Move to DR site: switch selected herds over to their DR copy",
        permissions=["switchover"],
    )
    def move_to_dr_site(self, request: HttpRequest, queryset: QuerySet[Herd]):
        from herds.admin.site_drills import move_to_dr_site

        herds = list(queryset.select_related("environment").order_by("name"))
        return move_to_dr_site(
            self, request, herds, request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        )

    @admin.action(
        description="Rolling restart of selected herds (replicas, then a switchover)",
        permissions=["switchover"],
    )
    def rolling_restart(self, request: HttpRequest, queryset: QuerySet[Herd]):
        from herds.admin.maintenance import rolling_restart_action

        return rolling_restart_action(self, request, queryset)

    @admin.action(
        description="Change a setting on every member of selected herds", permissions=["configure"]
    )
    def change_setting_herds(self, request: HttpRequest, queryset: QuerySet[Herd]):
        from instances.admin.configure import change_herd_setting_action

        return change_herd_setting_action(self, request, queryset)

    def has_configure_permission(self, request: HttpRequest) -> bool:
        from instances.admin.configure import PERMISSION

        return request.user.has_perm(PERMISSION)

    def has_switchover_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("herds.switchover_herd")

    def has_failover_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("herds.failover_herd")


@admin.register(Herd)
class HerdAdmin(AuditedActionsMixin, DrillActionsMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "environment",
        "port",
        "pg_version",
        "vhost",
        "primary_column",
        "replica_count_column",
        "split_brain_column",
        "health",
        "instances_link",
    )
    list_filter = ("environment", "pg_version")
    search_fields = ("name", "vhost", "ro_vhost", "cluster_name", "owner")
    list_select_related = ("environment",)
    list_per_page = 100
    ordering = ("name",)
    change_form_template = "admin/herds/herd/change_form.html"
    fieldsets = (
        (None, {"fields": ("name", "environment", "description", "owner")}),
        ("PostgreSQL", {"fields": ("pg_version", "port", "data_root", "cluster_name")}),
        ("DNS", {"fields": ("vhost", "ro_vhost")}),
        ("Endpoints for applications", {"fields": ("endpoints",)}),
        ("Configuration drift between members", {"fields": ("settings_drift",)}),
        ("Recent jobs", {"fields": ("recent_jobs",)}),
    )
    inlines = [InstanceInline, DRCandidateInline]

    @admin.display(description="recent jobs")
    def recent_jobs(self, herd: Herd) -> str:
        if herd.pk is None:
            return "—"
        from django.db.models import Q

        from instances.admin.jobs import recent_jobs_html
        from instances.models import Job

        return recent_jobs_html(Job.objects.filter(Q(herd=herd) | Q(instance__herd=herd)))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Herd]:
        return (
            super()
            .get_queryset(request)
            .with_summary()
            .annotate(**display.herd_health_annotations())
        )

    @admin.display(description="health")
    def health(self, herd: Herd) -> str:
        return display.herd_health_summary(herd)

    def get_readonly_fields(self, request: HttpRequest, obj: Herd | None = None):
        # Fixed at creation (see Herd.save): it is the name of a cluster on disk.
        if obj is not None:
            return ("cluster_name", "recent_jobs", "endpoints", "settings_drift")
        return ("recent_jobs", "endpoints", "settings_drift")

    @admin.display(description="settings")
    def settings_drift(self, herd: Herd) -> str:
        if herd.pk is None:
            return "—"
        from instances.admin.settings_view import herd_drift_html

        return herd_drift_html(herd.pk)

    @admin.display(description="endpoints")
    def endpoints(self, herd: Herd) -> str:
        """The DNS names and the multi-host strings applications should use (no password:
        they bring their own)."""
        if herd.pk is None:
            return "—"
        members = [
            i
            for i in Instance.objects.filter(herd=herd).select_related("server").order_by("pk")
            if not i.fenced
        ]

        def name(vhost: str) -> str:
            try:
                return dns_records.fqdn(vhost) if vhost else ""
            except dns_records.DNSNameError:
                return ""

        rows = endpoints.endpoints(
            vhost=name(herd.vhost),
            ro_vhost=name(herd.ro_vhost),
            port=herd.port,
            primary=[(i.server.hostname, i.port) for i in members if i.role == Role.PRIMARY],
            replicas=[(i.server.hostname, i.port) for i in members if i.role != Role.PRIMARY],
        )
        if not rows:
            return "No vhost and no instance yet."
        return format_html(
            '<table id="herd-endpoints">{}</table><div class="help">Replace DBNAME; the '
            "multi-host strings list every unfenced member and follow a switchover without "
            "waiting for DNS.</div>",
            format_html_join(
                "",
                "<tr><th>{}</th><td><code>{}</code></td><td>{}</td></tr>",
                ((e.what, e.value, e.note) for e in rows),
            ),
        )

    @admin.display(description="primary", ordering="primary_address")
    def primary_column(self, herd: Herd) -> str:
        return herd.primary_address or "—"

    @admin.display(description="replicas", ordering="replica_count")
    def replica_count_column(self, herd: Herd) -> int:
        return herd.replica_count

    @admin.display(description="split-brain", ordering="online_primary_count")
    def split_brain_column(self, herd: Herd) -> str:
        return split_brain_flag(herd)

    @admin.display(description="instances")
    def instances_link(self, herd: Herd) -> str:
        url = reverse("admin:instances_instance_changelist")
        return format_html('<a href="{}?herd__id__exact={}">instances</a>', url, herd.pk)

    def get_urls(self):
        def view(func):
            def wrapped(request, *args, **kwargs):
                return func(self, request, *args, **kwargs)

            return self.admin_site.admin_view(wrapped)

        return [
            path("topology/", view(topology.fleet_view), name="herds_herd_topology"),
            path(
                "<int:object_id>/topology.svg",
                view(topology.herd_svg_view),
                name="herds_herd_topology_svg",
            ),
        ] + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url="", extra_context=None):
        herd = self.get_object(request, object_id)
        primaries = []
        extra_context = dict(extra_context or {})
        if herd is not None:
            if herd.split_brain:
                primaries = [instance for instance in herd.primaries() if instance.online]
            extra_context.update(topology.herd_context(herd))
        extra_context["split_brain_primaries"] = primaries
        return super().change_view(request, object_id, form_url, extra_context)

    def save_formset(self, request: HttpRequest, form, formset, change: bool) -> None:
        if formset.model is DRCandidate:
            candidates = formset.save(commit=False)
            for candidate in candidates:
                # Changing a candidate's instance or priority is a new decision: record
                # who made it and when.
                candidate.acknowledged_by = request.user
                candidate.acknowledged_at = timezone.now()
                candidate.save()
            for candidate in formset.deleted_objects:
                candidate.delete()
            formset.save_m2m()
            return
        super().save_formset(request, form, formset, change)


@admin.register(DRPair)
class DRPairAdmin(ReadOnlyAdminMixin, AuditedActionsMixin, DrillActionsMixin, admin.ModelAdmin):
    """Every herd with a primary and at least one replica, as the original ElepHaaS listed.

    Read-only: DR candidates are acknowledged on the herd's page.
    """

    list_display = (
        "herd_link",
        "environment",
        "primary_column",
        "replicas_column",
        "dr_candidates_column",
        "split_brain_column",
    )
    list_display_links = None
    list_filter = ("environment",)
    search_fields = ("name", "vhost")
    list_select_related = ("environment",)
    list_per_page = 100
    ordering = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Herd]:
        # Two prefetch queries per page whatever its size: replicas and candidates of the
        # page's herds only.
        replicas = (
            Instance.objects.filter(role=Role.REPLICA)
            .select_related("server")
            .order_by("server__hostname", "port")
        )
        candidates = DRCandidate.objects.select_related("instance__server", "acknowledged_by")
        return (
            super()
            .get_queryset(request)
            .dr_pairs()
            .with_summary()
            .prefetch_related(
                Prefetch("instances", queryset=replicas, to_attr="replica_list"),
                Prefetch("dr_candidates", queryset=candidates, to_attr="candidate_list"),
            )
        )

    @admin.display(description="herd", ordering="name")
    def herd_link(self, herd: Herd) -> str:
        url = reverse("admin:herds_herd_change", args=[herd.pk])
        return format_html('<a href="{}">{}</a>', url, herd.name)

    @admin.display(description="primary", ordering="primary_address")
    def primary_column(self, herd: Herd) -> str:
        return herd.primary_address or "—"

    @admin.display(description="replicas")
    def replicas_column(self, herd: Herd) -> str:
        def lag(instance: Instance) -> str:
            return format_bytes(instance.lag_bytes) if instance.lag_bytes is not None else "?"

        return format_html_join(
            mark_safe("<br>"),
            "{} {} (lag {})",
            (
                (online_badge(instance.online), instance.address, lag(instance))
                for instance in herd.replica_list
            ),
        )

    @admin.display(description="DR candidates")
    def dr_candidates_column(self, herd: Herd) -> str:
        if not herd.candidate_list:
            return badge("none acknowledged", RED)
        return format_html_join(
            mark_safe("<br>"),
            "{}. {} <small>(by {}, {})</small>",
            (
                (
                    candidate.priority,
                    candidate.instance.address,
                    candidate.acknowledged_by or "unknown",
                    candidate.acknowledged_at.date(),
                )
                for candidate in herd.candidate_list
            ),
        )

    @admin.display(description="split-brain", ordering="online_primary_count")
    def split_brain_column(self, herd: Herd) -> str:
        return split_brain_flag(herd)


@admin.register(Drill)
class DrillAdmin(ReadOnlyAdminMixin, AuditedActionsMixin, admin.ModelAdmin):
    """Past switchovers and failovers with the figures an auditor asks for."""

    list_display = (
        "started_at",
        "herd",
        "kind",
        "requested_by_name",
        "old_primary",
        "new_primary",
        "rto",
        "dns_cutover",
        "data_lost",
        "split_brain",
        "outcome",
        "job_link",
    )
    list_filter = (
        "kind",
        "herd__environment",
        "herd",
        ("split_brain_from", admin.EmptyFieldListFilter),
    )
    search_fields = ("herd__name", "requested_by_name", "old_primary", "new_primary")
    list_select_related = ("herd", "job")
    list_per_page = 100
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in Drill._meta.fields] + [
        "rto",
        "dns_cutover",
        "data_lost",
        "split_brain",
    ]

    def get_urls(self):
        from herds.admin import site_drills

        def view(func, **kwargs):
            def wrapped(request, campaign_id):
                return func(self, request, campaign_id, **kwargs)

            return self.admin_site.admin_view(wrapped)

        return [
            path(
                "site/<int:campaign_id>/",
                view(site_drills.record_view),
                name="herds_drill_site_record",
            ),
            path(
                "site/<int:campaign_id>/export.csv",
                view(site_drills.record_view, fmt="csv"),
                name="herds_drill_site_csv",
            ),
            path(
                "site/<int:campaign_id>/export.json",
                view(site_drills.record_view, fmt="json"),
                name="herds_drill_site_json",
            ),
            path(
                "site/<int:campaign_id>/failback/",
                view(site_drills.failback_view),
                name="herds_drill_site_failback",
            ),
        ] + super().get_urls()

    @admin.display(description="RTO (s)")
    def rto(self, drill: Drill) -> str:
        return "—" if drill.rto_seconds is None else f"{drill.rto_seconds:.2f}"

    @admin.display(description="DNS cut-over (s)")
    def dns_cutover(self, drill: Drill) -> str:
        if drill.dns_ok is False:
            return format_html('<strong style="color:#ba2121">failed</strong>')
        return "—" if drill.dns_seconds is None else f"{drill.dns_seconds:.2f}"

    @admin.display(description="data lost", ordering="data_lost_bytes")
    def data_lost(self, drill: Drill) -> str:
        if drill.data_lost_bytes is None:
            return "unknown"
        if not drill.data_lost_exact:
            return f"at least {format_bytes(drill.data_lost_bytes)} (true loss unknown)"
        if drill.wal_salvaged_bytes:
            return (
                f"{format_bytes(drill.data_lost_bytes)} (salvaged "
                f"{format_bytes(drill.wal_salvaged_bytes)} of WAL from the old primary)"
            )
        return format_bytes(drill.data_lost_bytes)

    @admin.display(description="split brain", ordering="split_brain_from")
    def split_brain(self, drill: Drill) -> str:
        if drill.split_brain_from is None:
            return "—"
        until = drill.split_brain_until
        seconds = (until - drill.split_brain_from).total_seconds() if until else None
        return format_html(
            '<strong style="color:#ba2121">SPLIT BRAIN: the old primary took writes from '
            "{} until {}{}</strong>",
            drill.split_brain_from.strftime("%Y-%m-%d %H:%M:%S"),
            until.strftime("%H:%M:%S") if until else "now",
            f" ({seconds:.0f} s)" if seconds is not None else "",
        )

    @admin.display(description="job")
    def job_link(self, drill: Drill) -> str:
        return format_html('<a href="{}">#{}</a>', drill.job.get_absolute_url(), drill.job_id)
