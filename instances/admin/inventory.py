"""Admin for servers and instances.

List pages run a fixed number of queries whatever the fleet size: every column reads
only what list_select_related or an annotation already fetched (tests/instances/
test_admin.py and bench/bench_admin_list.py hold this).

Admin never opens SSH for operations. The one exception is pinning a host key, which
happens inside the forms of instances/forms.py when a DBA adds a server or re-pins one.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from elephaas.admin_security import AuditedActionsMixin, refuse
from herds.models import Herd
from instances.admin import configure, display, jobs, rebuild, settings_view
from instances.admin.action_forms import PromoteOptionsForm, StopOptionsForm
from instances.admin.actions import confirm_and_queue
from instances.admin.display import GREY, ORANGE, RED, badge, online_badge
from instances.admin.forms import HostKeyRepinForm, ServerAddForm, controller_public_key
from instances.audit import record_request, remote_addr, username_of
from instances.choices import AuditVerb
from instances.models import Instance, JobKind, Role, Server, correlated_count
from instances.wal import format_bytes

# Colours of Django's admin palette, so badges look at home in both themes.
ROLE_COLOURS = {Role.PRIMARY: "#1565c0", Role.REPLICA: "#455a64", Role.UNKNOWN: GREY}

ONE_DAY = timedelta(days=1)

# Beyond this many herds the herd filter stops listing them all (see HerdListFilter).
HERD_FILTER_LIMIT = 50


def has_instances_perm(request: HttpRequest, codename: str) -> bool:
    return request.user.has_perm(f"instances.{codename}")


class HerdListFilter(admin.RelatedFieldListFilter):
    """Filter by herd, without a sidebar that grows with the fleet.

    With thousands of herds a full list would make every page heavier the bigger the
    fleet (and useless to scroll). Past HERD_FILTER_LIMIT, the list narrows to the herds
    of the chosen environment; if those are still too many, only the herd already
    filtered on is shown, so it can be cleared. Searching by herd name, or following the
    link on a herd's page, reaches any herd.
    """

    def field_choices(self, field, request, model_admin):
        herds = Herd.objects.order_by("name")
        environment = request.GET.get("herd__environment__id__exact")
        if environment and environment.isdigit():
            herds = herds.filter(environment_id=environment)
        choices = list(herds.values_list("pk", "name")[: HERD_FILTER_LIMIT + 1])
        if len(choices) <= HERD_FILTER_LIMIT:
            return choices
        selected = [value for value in (self.lookup_val or []) if str(value).isdigit()]
        if not selected:
            return []
        return list(Herd.objects.filter(pk__in=selected).values_list("pk", "name"))


@admin.register(Server)
class ServerAdmin(AuditedActionsMixin, admin.ModelAdmin):
    list_display = (
        "hostname",
        "environment",
        "ssh_user",
        "ssh_port",
        "host_key_fingerprint",
        "last_contact",
        "instance_count",
    )
    list_filter = ("environment",)
    search_fields = ("hostname", "notes")
    list_select_related = ("environment",)
    list_per_page = 100
    ordering = ("hostname",)
    add_form_template = "admin/instances/server/add_form.html"
    change_form_template = "admin/instances/server/change_form.html"
    actions = ("discover_instances", "check_connection")

    add_fieldsets = (
        (None, {"fields": ("hostname", "environment", "ssh_port", "ssh_user", "notes")}),
        (
            "Host key",
            {
                "fields": (
                    "fingerprint_checked",
                    "host_key_type",
                    "host_key",
                    "host_key_fingerprint",
                    "key_source",
                )
            },
        ),
    )
    change_fieldsets = (
        (None, {"fields": ("hostname", "environment", "ssh_port", "ssh_user", "notes")}),
        (
            "Pinned host key",
            {
                "fields": ("host_key_type", "host_key_fingerprint", "host_key"),
                "description": "Changed only by re-pinning (button at the top right).",
            },
        ),
        ("Status", {"fields": ("last_contact", "created_at", "updated_at")}),
        ("Recent jobs", {"fields": ("recent_jobs",)}),
    )

    @admin.display(description="recent jobs")
    def recent_jobs(self, server: Server) -> str:
        if server.pk is None:
            return "—"
        return jobs.recent_jobs_html(server.jobs.all())

    def has_discover_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("instances.discover_server")

    @admin.action(description="Discover instances on selected servers", permissions=["discover"])
    def discover_instances(self, request: HttpRequest, queryset: QuerySet[Server]):
        return confirm_and_queue(
            self,
            request,
            queryset,
            kind=JobKind.DISCOVER,
            title="Discover instances",
            what_happens="One discovery job per server: over SSH, list its PostgreSQL clusters "
            "(pg_lsclusters, or its running postmasters), probe each one, and create or update "
            "its instances and herds. Nothing is changed on the servers themselves.",
            describe=lambda server: [] if server.host_key else ["no pinned host key: will fail"],
        )

    @admin.action(description="Check SSH connection to selected servers", permissions=["discover"])
    def check_connection(self, request: HttpRequest, queryset: QuerySet[Server]):
        return confirm_and_queue(
            self,
            request,
            queryset,
            kind=JobKind.CHECK_SERVER,
            title="Check SSH connection",
            what_happens="One job per server: log in with the controller's key against the "
            "pinned host key and run `id -un`. Nothing is changed on the servers.",
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Server]:
        return (
            super()
            .get_queryset(request)
            .annotate(_instance_count=correlated_count(Instance.objects.all(), "server"))
        )

    @admin.display(description="instances", ordering="_instance_count")
    def instance_count(self, server: Server) -> int:
        return server._instance_count

    def get_fieldsets(self, request: HttpRequest, obj: Server | None = None):
        return self.add_fieldsets if obj is None else self.change_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Server | None = None):
        if obj is None:
            return ()
        # The pin only changes through the re-pin page, where the new key is fetched from
        # the server and confirmed; typing a key here would trust whatever was pasted.
        return (
            "host_key_type",
            "host_key_fingerprint",
            "host_key",
            "last_contact",
            "created_at",
            "updated_at",
            "recent_jobs",
        )

    def get_form(self, request: HttpRequest, obj: Server | None = None, **kwargs):
        if obj is None:
            kwargs["form"] = ServerAddForm
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request: HttpRequest, obj: Server, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            # ServerAddForm pinned the key the DBA confirmed: a pin of its own in the trail.
            record_pin(request, obj, "none")

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None):
        extra_context = {**(extra_context or {}), "controller_key": controller_public_key()}
        return super().add_view(request, form_url, extra_context)

    def change_view(self, request: HttpRequest, object_id: str, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_pin_host_key": has_instances_perm(request, "pin_host_key"),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/pin-host-key/",
                self.admin_site.admin_view(self.pin_host_key_view),
                name="{}_{}_pin_host_key".format(*info),
            ),
            *super().get_urls(),
        ]

    def pin_host_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Fetch the server's current host key, show old and new, pin it once confirmed."""
        if not has_instances_perm(request, "pin_host_key"):
            refuse(request, "pin host keys", "instances.pin_host_key")
        server = get_object_or_404(Server, pk=object_id)
        change_url = reverse("admin:instances_server_change", args=[server.pk])
        if request.method == "POST":
            form = HostKeyRepinForm(request.POST, server=server)
            old = server.host_key_fingerprint or "none"
            if form.is_valid():
                form.save()
                message = f"Re-pinned host key: {old} → {server.host_key_fingerprint}"
                self.log_change(request, server, message)
                record_pin(request, server, old)
                self.message_user(request, f"{server}: {message}.", messages.SUCCESS)
                return HttpResponseRedirect(change_url)
        else:
            form = HostKeyRepinForm(server=server)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Re-pin the host key of {server}",
            "opts": self.opts,
            "original": server,
            "form": form,
            "change_url": change_url,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/instances/server/pin_host_key.html", context)


def record_pin(request: HttpRequest, server: Server, old: str) -> None:
    new = server.host_key_fingerprint
    record_request(
        request,
        AuditVerb.HOST_KEY_PINNED,
        f"{username_of(request.user)!r} from {remote_addr(request)} pinned the "
        f"{server.host_key_type} host key of {server.hostname}: {old} → {new}",
        obj=server,
        changes={"host_key_fingerprint": [None if old == "none" else old, new]},
    )


# Observed state belongs to health polling and jobs: shown, never edited.
OBSERVED_FIELDS = (
    "online",
    "pending_restart",
    "last_lsn",
    "lag_bytes",
    "lag_seconds",
    "last_checked",
    "receive_lsn",
    "replay_lsn",
    "upstream_streaming",
    "last_error",
    "state_changed_at",
    "streams_from",
    "created_at",
    "updated_at",
)


class PendingRestartFilter(admin.EmptyFieldListFilter):
    """ "Pending restart: yes / no", from pg_settings.pending_restart as last seen."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = "pending restart"

    def choices(self, changelist):
        for choice in super().choices(changelist):
            choice["display"] = {"Empty": "no", "Not empty": "yes"}.get(
                str(choice["display"]), choice["display"]
            )
            yield choice


@admin.register(Instance)
class InstanceAdmin(AuditedActionsMixin, admin.ModelAdmin):
    list_display = (
        "herd",
        "address",
        "role_badge",
        "upstream_address",
        "online_badge",
        "replication",
        "pg",
        "lag",
        "flags",
        "checked",
        "changed",
    )
    list_display_links = ("herd", "address")
    list_filter = (
        "herd__environment",
        ("herd", HerdListFilter),
        "role",
        "online",
        display.ReplicationListFilter,
        "pg_version",
        "fenced",
        ("fence_confirmed_at", admin.EmptyFieldListFilter),
        "needs_rebuild",
        ("pending_restart", PendingRestartFilter),
    )
    search_fields = ("herd__name", "server__hostname", "herd__vhost")
    # upstream__server serves the upstream column; without it, one query per replica row.
    list_select_related = ("herd", "server", "upstream__server")
    list_per_page = 100
    actions = (
        "start_instances",
        "stop_instances",
        "restart_instances",
        "reload_instances",
        "promote_instances",
        rebuild.rebuild_action,
        rebuild.remaster_action,
        rebuild.init_action,
        configure.change_setting_action,
    )
    has_configure_permission = configure.has_configure_permission
    has_rebuild_permission = rebuild.has_rebuild_permission
    has_remaster_permission = rebuild.has_remaster_permission
    has_init_permission = rebuild.has_init_permission
    ordering = ("herd__name", "server__hostname", "port")
    autocomplete_fields = ("herd", "server", "upstream")
    # Observed state belongs to health polling and jobs; a DBA edits topology and flags.
    readonly_fields = (*OBSERVED_FIELDS, "settings_seen_at", "non_default_settings", "recent_jobs")
    fieldsets = (
        (None, {"fields": ("herd", "server", "port", "pg_version", "data_dir")}),
        ("Replication", {"fields": ("role", "upstream")}),
        ("Flags", {"fields": ("fenced", "needs_rebuild", "rebuild_job", "notes")}),
        (
            "Observed state",
            {"fields": OBSERVED_FIELDS},
        ),
        (
            "Settings (non-default, from pg_settings)",
            {"fields": ("non_default_settings",), "classes": ("collapse",)},
        ),
        ("Recent jobs", {"fields": ("recent_jobs",)}),
    )

    @admin.display(description="settings")
    def non_default_settings(self, instance: Instance) -> str:
        return settings_view.instance_settings_html(instance)

    @admin.display(description="recent jobs")
    def recent_jobs(self, instance: Instance) -> str:
        if instance.pk is None:
            return "—"
        return jobs.recent_jobs_html(instance.jobs.all())

    def get_queryset(self, request: HttpRequest) -> QuerySet[Instance]:
        # Also for the change page and autocomplete results, which print str(instance).
        # It must name everything the list needs: ChangeList ignores list_select_related
        # once get_queryset() has called select_related().
        return super().get_queryset(request).select_related(*self.list_select_related)

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # The fleet's widest list gets the whole width of a 1366-pixel laptop screen: no
        # app sidebar here (breadcrumbs lead back), and its own narrow-screen rules
        # (templates/admin/instances/instance/change_list.html; tests/browser/test_layout.py).
        extra_context = {**(extra_context or {}), "is_nav_sidebar_enabled": False}
        return super().changelist_view(request, extra_context)

    @admin.display(description="server:port", ordering="server__hostname")
    def address(self, instance: Instance) -> str:
        return instance.address

    @admin.display(description="PG", ordering="pg_version")
    def pg(self, instance: Instance) -> int:
        return instance.pg_version

    @admin.display(description="checked", ordering="last_checked")
    def checked(self, instance: Instance) -> str:
        """The time of the last health check (the date once it is a day old), the full
        timestamp on hover."""
        if instance.last_checked is None:
            return "never"
        when = timezone.localtime(instance.last_checked)
        short = when.strftime("%H:%M:%S" if timezone.now() - when < ONE_DAY else "%Y-%m-%d")
        return format_html(
            '<span title="{}">{}</span>', when.strftime("%Y-%m-%d %H:%M:%S %Z"), short
        )

    @admin.display(description="role", ordering="role")
    def role_badge(self, instance: Instance) -> str:
        return badge(instance.get_role_display(), ROLE_COLOURS[Role(instance.role)])

    @admin.display(description="upstream", ordering="upstream__server__hostname")
    def upstream_address(self, instance: Instance) -> str:
        return instance.upstream.address if instance.upstream_id else "—"

    @admin.display(description="online", ordering="online")
    def online_badge(self, instance: Instance) -> str:
        return online_badge(instance.online)

    @admin.display(description="replication")
    def replication(self, instance: Instance) -> str:
        return display.replication_badge(instance)

    @admin.display(description="changed", ordering="state_changed_at")
    def changed(self, instance: Instance) -> str:
        return display.changed_recently(instance)

    @admin.display(description="lag", ordering="lag_bytes")
    def lag(self, instance: Instance) -> str:
        if instance.role == Role.PRIMARY:
            return "—"
        parts = []
        if instance.lag_bytes is not None:
            parts.append(format_bytes(instance.lag_bytes))
        if instance.lag_seconds is not None:
            parts.append(f"{instance.lag_seconds:.1f} s")
        return " / ".join(parts) or "?"

    @admin.display(description="flags")
    def flags(self, instance: Instance) -> str:
        shown = []
        if instance.fenced:
            shown.append("fenced")
        if instance.needs_rebuild:
            shown.append("needs rebuild")
        if instance.rebuild_job is not None:
            shown.append(f"rebuild incomplete (job {instance.rebuild_job})")
        red = badge(", ".join(shown), RED) if shown else ""
        if instance.pending_restart:
            pending = badge(f"restart pending: {instance.pending_restart}", ORANGE)
            return format_html("{} {}", red, pending) if red else pending
        return red


def _with_context(queryset: QuerySet[Instance]) -> list[Instance]:
    """The selected instances with what their warnings need, in a fixed number of queries."""
    targets = list(
        queryset.select_related("herd", "server", "upstream__server").annotate(
            replicas_attached=correlated_count(Instance.objects.all(), "upstream")
        )
    )
    herd_ids = {t.herd_id for t in targets}
    primaries: dict[int, list[Instance]] = {}
    for primary in Instance.objects.select_related("herd", "server").filter(
        herd_id__in=herd_ids, role=Role.PRIMARY, online=True
    ):
        primaries.setdefault(primary.herd_id, []).append(primary)
    for target in targets:
        others = [p for p in primaries.get(target.herd_id, []) if p.pk != target.pk]
        target.live_primary_elsewhere = others[0] if others else None
    return targets


def _warnings(action: str):
    def describe(instance: Instance) -> list[str]:
        notes = []
        if instance.fenced and action in ("start", "restart", "promote"):
            notes.append("fenced (old primary after a failover): the job will refuse")
        if instance.rebuild_job is not None and action in ("start", "restart", "promote"):
            notes.append(f"{instance.unfinished_rebuild}: the job will refuse")
        if action in ("stop", "restart") and instance.role == Role.PRIMARY:
            if instance.replicas_attached:
                notes.append(
                    f"primary with {instance.replicas_attached} replica(s) attached: they lose "
                    "their upstream while it is down"
                )
        if action == "promote":
            if instance.role == Role.PRIMARY:
                notes.append("already a primary: nothing to do")
            elif instance.live_primary_elsewhere is not None:
                notes.append(
                    f"the herd's primary {instance.live_primary_elsewhere.address} is recorded "
                    "online: promoting creates two primaries (tick below to accept)"
                )
        if instance.online is False and action in ("stop", "reload"):
            notes.append("recorded offline")
        return notes

    return describe


def _instance_action(kind: str, verb: str, what_happens: str, form_class=None):
    def action(modeladmin: InstanceAdmin, request: HttpRequest, queryset: QuerySet[Instance]):
        return confirm_and_queue(
            modeladmin,
            request,
            _with_context(queryset),
            kind=kind,
            title=f"{verb.capitalize()} instances",
            what_happens=what_happens,
            describe=_warnings(verb),
            form_class=form_class,
        )

    action.__name__ = f"{verb}_instances"
    return action


_ACTIONS = {
    "start": (
        JobKind.START,
        "Start the selected instances (pg_ctlcluster start, or the "
        "COMMANDS preset), then wait until each accepts connections. Running ones are "
        "left alone.",
        None,
    ),
    "stop": (
        JobKind.STOP,
        "Stop the selected instances, then check each refuses connections. "
        "Stopped ones are left alone.",
        StopOptionsForm,
    ),
    "restart": (
        JobKind.RESTART,
        "Restart the selected instances, then wait until each accepts connections again.",
        StopOptionsForm,
    ),
    "reload": (
        JobKind.RELOAD,
        "Reload the configuration of the selected instances and check "
        "that each loaded it (pg_conf_load_time moves forward).",
        None,
    ),
    "promote": (
        JobKind.PROMOTE,
        "Promote the selected replicas to primaries (pg_ctl promote), "
        "wait until each leaves recovery, and record it as primary with no upstream.",
        PromoteOptionsForm,
    ),
}
for _verb, (_kind, _text, _form) in _ACTIONS.items():
    _func = _instance_action(_kind, _verb, _text, _form)
    _func = admin.action(
        description=f"{_verb.capitalize()} selected instances", permissions=[_verb]
    )(_func)
    setattr(InstanceAdmin, f"{_verb}_instances", _func)
    setattr(
        InstanceAdmin,
        f"has_{_verb}_permission",
        (lambda perm: lambda self, request: request.user.has_perm(perm))(
            f"instances.{_verb}_instance"
        ),
    )
