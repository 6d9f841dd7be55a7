"""How health looks in the admin: badges for instance and herd lists, and a list filter.

Each helper reads only the row it is given (and, for instances, its select_related
upstream), so list pages stay at a fixed number of queries:

- `changed_recently(instance)` and `replication_badge(instance)` are list_display
  callables for the instance list (which already selects upstream__server);
- `herd_health_annotations()` + `herd_health_summary(herd)` for the herd list;
- `ReplicationListFilter` filters the instance list the way the badge classifies rows
  (the dashboard links to it with `?replication=lagging` and so on).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from instances.choices import ReplicationHealth
from instances.health_rules import replication_health, replication_q
from instances.models import Instance, correlated_count
from instances.wal import format_bytes, format_seconds

# The palette of instances.admin (not imported: the admin will import this module).
GREEN = "#2e7d32"
RED = "#ba2121"
ORANGE = "#e65100"
GREY = "#777"

CHANGED_RECENTLY = timedelta(minutes=10)

REPLICATION_COLOURS = {
    ReplicationHealth.STREAMING: GREEN,
    ReplicationHealth.LAGGING: ORANGE,
    ReplicationHealth.NOT_STREAMING: RED,
    ReplicationHealth.UPSTREAM_GONE: RED,
    ReplicationHealth.UPSTREAM_WRONG: RED,
    ReplicationHealth.UNKNOWN: GREY,
}


def change_urls(viewname: str) -> Callable[[object], str]:
    """pk → the admin change page of that row, reversing the URL once: pages that link
    every herd or instance of the fleet would otherwise resolve it a thousand times."""
    head, tail = reverse(viewname, args=[0]).rsplit("/0/", 1)
    return lambda pk: f"{head}/{pk}/{tail}"


def _badge(text: str, colour: str, title: str = "") -> str:
    if title:
        return format_html('<strong style="color: {}" title="{}">{}</strong>', colour, title, text)
    return format_html('<strong style="color: {}">{}</strong>', colour, text)


def badge(text: str, colour: str) -> str:
    return format_html('<strong style="color: {}">{}</strong>', colour, text)


def online_badge(online: bool | None) -> str:
    if online is None:
        return badge("● unknown", GREY)
    return badge("● online", GREEN) if online else badge("● offline", RED)


@admin.display(description="changed", ordering="state_changed_at")
def changed_recently(instance: Instance, now=None) -> str:
    """An orange mark when its online state or role changed in the last 10 minutes."""
    changed = instance.state_changed_at
    now = now or timezone.now()
    if changed is None or now - changed > CHANGED_RECENTLY:
        return ""
    minutes = max(0, int((now - changed).total_seconds() // 60))
    ago = "just now" if minutes == 0 else f"{minutes} min ago"
    return _badge(f"● changed {ago}", ORANGE, f"state changed at {changed:%Y-%m-%d %H:%M:%S %Z}")


def lag_text(instance: Any) -> str:
    parts = []
    if instance.lag_bytes is not None:
        parts.append(format_bytes(instance.lag_bytes))
    if instance.lag_seconds is not None:
        parts.append(format_seconds(instance.lag_seconds))
    return ", ".join(parts) or "?"


@admin.display(description="replication")
def replication_badge(instance: Instance) -> str:
    """streaming (green), lagging: 12 MB, 40 s (orange), not streaming or upstream gone
    (red); grey when not known; empty for a primary."""
    state = replication_health(instance)
    if state is None:
        return ""
    colour = REPLICATION_COLOURS[state]
    if state == ReplicationHealth.LAGGING:
        return _badge(f"lagging: {lag_text(instance)}", colour)
    if state == ReplicationHealth.UPSTREAM_GONE:
        return _badge("upstream gone", colour, f"{instance.upstream.address} is offline")
    if state == ReplicationHealth.UPSTREAM_WRONG:
        why = (
            "a switchover or failover could not repoint it: remaster it to its herd's primary"
            if instance.needs_remaster
            else f"its upstream {instance.upstream.address} is fenced: remaster it"
        )
        return _badge("upstream wrong", colour, why)
    if state == ReplicationHealth.UNKNOWN:
        if instance.online is False:
            why = "the instance is offline"
        elif instance.online is None:
            why = "not checked yet"
        else:
            why = "WAL receiver not checked yet, or hidden from the probe role (grant it "
            why += "pg_read_all_stats)"
        return _badge("unknown", colour, why)
    return _badge(state.label, colour)


class ReplicationListFilter(admin.SimpleListFilter):
    """Replicas by replication health, classified exactly as replication_badge shows them."""

    title = "replication"
    parameter_name = "replication"

    def lookups(self, request, model_admin):
        return ReplicationHealth.choices

    def queryset(self, request, queryset: QuerySet[Instance]) -> QuerySet[Instance]:
        if self.value() in ReplicationHealth.values:
            return queryset.filter(replication_q(self.value()))
        return queryset


# --- herds ----------------------------------------------------------------------------------


def herd_health_annotations() -> dict[str, Any]:
    """Per-herd counts for herd_health_summary, as correlated subqueries:
    `Herd.objects.annotate(**herd_health_annotations())`."""

    def count(condition: Q):
        return correlated_count(Instance.objects.filter(condition), "herd")

    return {
        "health_total": count(Q()),
        "health_offline": count(Q(online=False)),
        "health_unknown": count(Q(online__isnull=True)),
        "health_lagging": count(replication_q(ReplicationHealth.LAGGING)),
        "health_broken": count(
            replication_q(ReplicationHealth.NOT_STREAMING)
            | replication_q(ReplicationHealth.UPSTREAM_GONE)
            | replication_q(ReplicationHealth.UPSTREAM_WRONG)
        ),
    }


@admin.display(description="health")
def herd_health_summary(herd: Any) -> str:
    """ "all 3 online" (green), or what is wrong: "1 offline, 1 not streaming" (red),
    "1 lagging" (orange), "1 unknown" (grey). Needs herd_health_annotations()."""
    if not herd.health_total:
        return _badge("no instances", GREY)
    problems = []
    if herd.health_offline:
        problems.append((f"{herd.health_offline} offline", RED))
    if herd.health_broken:
        problems.append((f"{herd.health_broken} not streaming", RED))
    if herd.health_lagging:
        problems.append((f"{herd.health_lagging} lagging", ORANGE))
    if herd.health_unknown:
        problems.append((f"{herd.health_unknown} unknown", GREY))
    if not problems:
        return _badge(f"all {herd.health_total} online", GREEN)
    return format_html_join(
        mark_safe(", "), '<strong style="color: {}">{}</strong>', ((c, t) for t, c in problems)
    )


__all__ = [
    "ReplicationListFilter",
    "change_urls",
    "changed_recently",
    "herd_health_annotations",
    "herd_health_summary",
    "replication_badge",
]
