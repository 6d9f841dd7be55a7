"""Admin actions for rebuild, remaster and init (not wired here: see InstanceAdmin).

Each shows a confirmation page listing every selected instance with what will happen to
it — its upstream, the method — and queues one job per instance through
`confirm_and_queue`. The jobs decide again from live facts (instances.rebuild); the page
shows what the inventory says, so a DBA sees the plan before the worker checks it.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from instances import inventory
from instances.admin.action_forms import ActionOptionsForm
from instances.admin.actions import confirm_and_queue
from instances.choices import HERD_PRIMARY, CopyMethod
from instances.models import Instance, JobKind, Role, correlated_count

TEMPLATE = "admin/elephaas/confirm_rebuild.html"

METHOD_CHOICES = [
    (
        CopyMethod.AUTO,
        "auto: pg_rewind when its data allows it (checked by the job), else pg_basebackup",
    ),
    (CopyMethod.PG_BASEBACKUP, "pg_basebackup: a full copy streamed from the upstream"),
    (CopyMethod.RSYNC, "rsync: a full copy from the upstream's server inside pg_backup_start/stop"),
]


def _targets(queryset: QuerySet[Instance]) -> list[Instance]:
    """The selected instances with their downstream count and the upstream the job will
    copy from (inventory.choose_upstream: the job's own choice), in a fixed number of
    queries."""
    targets = list(
        queryset.select_related("herd", "server", "upstream__server", "upstream__herd").annotate(
            replicas_attached=correlated_count(Instance.objects.all(), "upstream")
        )
    )
    members = inventory.instances_by_herd(t.herd_id for t in targets)
    for target in targets:
        target.planned_upstream = inventory.choose_upstream(target, members.get(target.herd_id, []))
        target.is_risky = (target.role == Role.PRIMARY and not target.fenced) or bool(
            target.replicas_attached
        )
    return targets


def _label(instance: Instance | None) -> str:
    return str(instance) if instance is not None else "none: the job will refuse"


# --- rebuild ------------------------------------------------------------------------------------


class RebuildOptionsForm(ActionOptionsForm):
    method = forms.ChoiceField(
        choices=METHOD_CHOICES, initial=CopyMethod.AUTO, widget=forms.RadioSelect
    )
    max_rate_kb = forms.IntegerField(
        required=False,
        min_value=32,
        label="Limit a full copy to (kB/s)",
        help_text="Blank: no limit. Spares the upstream's disks and network.",
    )
    force = forms.BooleanField(
        required=False,
        label="Force: rebuild primaries and upstreams of other replicas too",
        help_text="A rebuild throws the instance's data away and copies its upstream's.",
    )

    def clean(self):
        data = super().clean()
        risky = [t for t in self.targets if getattr(t, "is_risky", False)]
        if risky and not data.get("force"):
            raise forms.ValidationError(
                "%(which)s: a primary or an upstream of other replicas; tick 'force' to "
                "rebuild it anyway, or deselect it.",
                params={"which": ", ".join(str(t) for t in risky)},
            )
        return data


def _rebuild_notes(instance: Instance) -> list[str]:
    notes = []
    if instance.role == Role.PRIMARY and not instance.fenced:
        notes.append("recorded as the herd's primary: its data would be thrown away")
    if instance.replicas_attached:
        notes.append(
            f"{instance.replicas_attached} replica(s) stream from it: they lose their "
            "upstream during the rebuild"
        )
    if instance.online:
        notes.append("running: the job stops it (fast) before copying")
    return notes


@admin.action(description="Rebuild selected replicas from their upstream", permissions=["rebuild"])
def rebuild_action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset):
    targets = _targets(queryset)
    for t in targets:
        t.detail_values = (_label(t.planned_upstream), "as chosen below (auto: decided live)")
    return confirm_and_queue(
        modeladmin,
        request,
        targets,
        kind=JobKind.REBUILD,
        title="Rebuild replicas",
        what_happens=(
            "Each selected instance is stopped (fast), its data replaced from its upstream — "
            "pg_rewind when its data is a rewindable copy of the herd, else a full copy — "
            "then it is started as a standby of that upstream and checked to stream."
        ),
        describe=_rebuild_notes,
        form_class=RebuildOptionsForm,
        template=TEMPLATE,
        extra_context={"columns": ("upstream", "method")},
    )


# --- remaster -----------------------------------------------------------------------------------


class RemasterOptionsForm(ActionOptionsForm):
    upstream_id = forms.TypedChoiceField(coerce=int, label="New upstream", choices=())

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        herds = {t.herd_id for t in self.targets}
        candidates = (
            Instance.objects.with_related()
            .filter(herd_id__in=herds, fenced=False)
            .exclude(pk__in=[t.pk for t in self.targets])
            .order_by("herd__name", "server__hostname", "port")
        )
        self.candidates = {c.pk: c for c in candidates}
        self.fields["upstream_id"].choices = [
            (HERD_PRIMARY, "each replica's herd primary (as recorded when its job runs)"),
            *((c.pk, f"{c} ({c.get_role_display()})") for c in candidates),
        ]

    def clean(self):
        data = super().clean()
        if data.get("upstream_id") == HERD_PRIMARY:
            return data
        upstream = self.candidates.get(data.get("upstream_id"))
        if upstream is None:
            return data
        others = [t for t in self.targets if t.herd_id != upstream.herd_id]
        if others:
            raise forms.ValidationError(
                "%(which)s: not in herd %(herd)s; remaster one herd at a time.",
                params={"which": ", ".join(str(t) for t in others), "herd": upstream.herd.name},
            )
        # Follow the new upstream's chain: reaching a selected replica would be a loop.
        selected, node, depth = {t.pk for t in self.targets}, upstream, 0
        while node is not None and node.upstream_id is not None and depth < 32:
            if node.upstream_id in selected:
                raise forms.ValidationError(
                    "%(up)s streams (directly or through others) from a selected replica: "
                    "that would be a replication loop.",
                    params={"up": str(upstream)},
                )
            node, depth = node.upstream, depth + 1
        return data


def _remaster_notes(instance: Instance) -> list[str]:
    if instance.role == Role.PRIMARY:
        return ["a primary: the job will refuse"]
    if instance.online is False:
        return ["recorded offline: the job will refuse unless it answers"]
    return []


@admin.action(
    description="Point selected replicas at another upstream (remaster)", permissions=["remaster"]
)
def remaster_action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset):
    targets = _targets(queryset)
    for t in targets:
        t.detail_values = (_label(t.upstream) if t.upstream else "none", "as chosen below")
    return confirm_and_queue(
        modeladmin,
        request,
        targets,
        kind=JobKind.REMASTER,
        title="Remaster replicas",
        what_happens=(
            "Each selected replica is pointed at the upstream chosen below (ALTER SYSTEM SET "
            "primary_conninfo, reload) and checked to stream from it. Refused for an upstream "
            "behind the replica (older timeline or lower WAL position)."
        ),
        describe=_remaster_notes,
        form_class=RemasterOptionsForm,
        template=TEMPLATE,
        extra_context={"columns": ("current upstream", "new upstream")},
    )


# --- init ---------------------------------------------------------------------------------------


def _init_notes(instance: Instance) -> list[str]:
    notes = []
    if instance.role not in (Role.PRIMARY, Role.REPLICA):
        notes.append("its role is unknown: set primary or replica; the job will refuse")
    if instance.online is not None:
        notes.append("already seen by ElepHaaS: the job only completes what is missing")
    return notes


@admin.action(description="Create selected instances on their servers", permissions=["init"])
def init_action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset):
    targets = _targets(queryset)
    for t in targets:
        copied = _label(t.planned_upstream) if t.role == Role.REPLICA else "—"
        t.detail_values = (t.get_role_display(), copied)
    return confirm_and_queue(
        modeladmin,
        request,
        targets,
        kind=JobKind.INIT,
        title="Create instances",
        what_happens=(
            "Each selected instance is created on its server (pg_createcluster, or initdb), "
            "configured from its herd, then started: a primary as it is, a replica from a "
            "full copy of its upstream, checked to stream. A retry resumes where it stopped."
        ),
        describe=_init_notes,
        template=TEMPLATE,
        extra_context={"columns": ("role", "copied from")},
    )


def has_rebuild_permission(self, request: HttpRequest) -> bool:
    return request.user.has_perm("instances.rebuild_instance")


def has_remaster_permission(self, request: HttpRequest) -> bool:
    return request.user.has_perm("instances.remaster_instance")


def has_init_permission(self, request: HttpRequest) -> bool:
    return request.user.has_perm("instances.init_instance")
