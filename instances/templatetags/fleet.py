"""The fleet at a glance, on the admin index: counts that link to the filtered lists.

Four queries whatever the fleet size: one aggregate over instances, one over jobs, one
count of split-brain herds, one of split brains found by fence jobs in the last week
(tests/instances/test_dashboard.py holds this).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import template
from django.conf import settings
from django.db.models import Count, Max, Min, Q
from django.urls import reverse
from django.utils import timezone

from herds.models import Drill, Herd
from instances.admin.jobs import STATE_COLOURS
from instances.choices import ReplicationHealth, Role
from instances.health_rules import replication_q
from instances.models import Instance, Job, JobState

register = template.Library()

RED, ORANGE, GREY = "#ba2121", "#e65100", "#777"
ERRORED_COLOUR = STATE_COLOURS[JobState.ERRORED]
FAILED_WINDOW = timedelta(hours=24)
SPLIT_BRAIN_WINDOW = timedelta(days=7)
# Queued jobs the broker did not take when they were created (queue.publish's note).
WAITING_Q = Q(state=JobState.QUEUED, dispatch_note__gt="")
# Health polling is late when its last check is older than this many intervals.
STALE_INTERVALS = 3


@dataclass(frozen=True)
class Figure:
    """One number on the dashboard, the list it links to, its colour when non-zero."""

    key: str
    label: str
    value: int
    url: str
    alarm: str = ""

    @property
    def colour(self) -> str:
        return self.alarm if self.value else ""


def fleet_counts(now: datetime | None = None) -> dict[str, Any]:
    """The dashboard's figures, as plain values."""
    now = now or timezone.now()
    figures = dict(
        total=Count("pk"),
        online=Count("pk", filter=Q(online=True)),
        offline=Count("pk", filter=Q(online=False)),
        unknown=Count("pk", filter=Q(online__isnull=True)),
        primaries=Count("pk", filter=Q(role=Role.PRIMARY)),
        replicas=Count("pk", filter=Q(role=Role.REPLICA)),
        lagging=Count("pk", filter=replication_q(ReplicationHealth.LAGGING)),
        not_streaming=Count("pk", filter=replication_q(ReplicationHealth.NOT_STREAMING)),
        upstream_gone=Count("pk", filter=replication_q(ReplicationHealth.UPSTREAM_GONE)),
        upstream_wrong=Count("pk", filter=replication_q(ReplicationHealth.UPSTREAM_WRONG)),
        fence_unconfirmed=Count("pk", filter=Q(fenced=True, fence_confirmed_at__isnull=True)),
        last_check=Max("last_checked"),
    )
    # Aliases must not shadow the fields the filters read (`online`): prefix them.
    counted = {
        name[2:]: value
        for name, value in Instance.objects.aggregate(
            **{f"n_{name}": expression for name, expression in figures.items()}
        ).items()
    }
    failed_since = (now - FAILED_WINDOW).replace(microsecond=0)
    counted.update(
        Job.objects.aggregate(
            jobs_running=Count("pk", filter=Q(state=JobState.RUNNING)),
            jobs_failed=Count("pk", filter=Q(state=JobState.FAILED, finished_at__gte=failed_since)),
            jobs_errored=Count(
                "pk", filter=Q(state=JobState.ERRORED, finished_at__gte=failed_since)
            ),
            jobs_waiting=Count("pk", filter=WAITING_Q),
            waiting_since=Min("created_at", filter=WAITING_Q),
        )
    )
    counted["split_brain"] = Herd.objects.split_brain().count()
    counted["split_brain_since"] = (now - SPLIT_BRAIN_WINDOW).replace(microsecond=0)
    counted["split_brain_found"] = Drill.objects.filter(
        split_brain_from__gte=counted["split_brain_since"]
    ).count()
    counted["failed_since"] = failed_since
    return counted


def _url(name: str, **params: Any) -> str:
    return f"{reverse(name)}?{urlencode(params)}"


@register.inclusion_tag("admin/instances/fleet_dashboard.html", takes_context=True)
def fleet_dashboard(context: template.Context) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("instances.view_instance"):
        return {"show": False}
    now = timezone.now()
    c = fleet_counts(now)
    instances = "admin:instances_instance_changelist"
    jobs = "admin:instances_job_changelist"
    herds = "admin:herds_herd_changelist"
    rows = [
        (
            "Instances",
            [
                Figure("online", "online", c["online"], _url(instances, online__exact=1)),
                Figure("offline", "offline", c["offline"], _url(instances, online__exact=0), RED),
                Figure(
                    "unknown",
                    "not checked",
                    c["unknown"],
                    _url(instances, online__isnull="True"),
                    GREY,
                ),
            ],
        ),
        (
            "Roles",
            [
                Figure(
                    "primaries", "primaries", c["primaries"], _url(instances, role__exact="primary")
                ),
                Figure(
                    "replicas", "replicas", c["replicas"], _url(instances, role__exact="replica")
                ),
            ],
        ),
        (
            "Replicas",
            [
                Figure(
                    key,
                    ReplicationHealth(key).label,
                    c[key],
                    _url(instances, replication=key),
                    colour,
                )
                for key, colour in (
                    (ReplicationHealth.LAGGING.value, ORANGE),
                    (ReplicationHealth.NOT_STREAMING.value, RED),
                    (ReplicationHealth.UPSTREAM_GONE.value, RED),
                    (ReplicationHealth.UPSTREAM_WRONG.value, RED),
                )
            ],
        ),
    ]
    if user.has_perm("herds.view_herd"):
        rows.append(
            (
                "Herds",
                [
                    Figure(
                        "split_brain",
                        "in split-brain",
                        c["split_brain"],
                        _url(herds, online_primary_count__gt=1),
                        RED,
                    ),
                    Figure(
                        "split_brain_found",
                        "split brains found by a fence job in the last 7 days",
                        c["split_brain_found"],
                        _url(
                            "admin:herds_drill_changelist",
                            split_brain_from__gte=c["split_brain_since"].isoformat(sep=" "),
                        ),
                        RED,
                    ),
                    Figure(
                        "fence_unconfirmed",
                        "fences not yet confirmed (server not reached since the failover)",
                        c["fence_unconfirmed"],
                        _url(instances, fenced__exact=1, fence_confirmed_at__isempty=1),
                        ORANGE,
                    ),
                ],
            )
        )
    if user.has_perm("instances.view_job"):
        rows.append(
            (
                "Jobs",
                [
                    Figure(
                        "jobs_running",
                        "running",
                        c["jobs_running"],
                        _url(jobs, state__exact="running"),
                    ),
                    Figure(
                        "jobs_failed",
                        "failed in the last 24 h",
                        c["jobs_failed"],
                        _url(
                            jobs,
                            state__exact="failed",
                            finished_at__gte=c["failed_since"].isoformat(sep=" "),
                        ),
                        RED,
                    ),
                    Figure(
                        "jobs_errored",
                        "errored (a bug) in the last 24 h",
                        c["jobs_errored"],
                        _url(
                            jobs,
                            state__exact="errored",
                            finished_at__gte=c["failed_since"].isoformat(sep=" "),
                        ),
                        ERRORED_COLOUR,
                    ),
                ],
            )
        )
    if c["jobs_waiting"] and user.has_perm("instances.view_job"):
        since = timezone.localtime(c["waiting_since"]).strftime("%H:%M:%S")
        rows.insert(
            0,
            (
                "Broker",
                [
                    Figure(
                        "jobs_waiting",
                        f"job(s) waiting: broker unreachable since {since} (they are sent "
                        "as soon as it answers)",
                        c["jobs_waiting"],
                        _url(jobs, state__exact="queued", dispatch_note__gt=""),
                        RED,
                    )
                ],
            ),
        )
    last_check = c["last_check"]
    stale_after = timedelta(seconds=STALE_INTERVALS * settings.HEALTH_INTERVAL)
    return {
        "show": True,
        "total": c["total"],
        "rows": rows,
        "last_check": last_check,
        "stale": bool(c["total"]) and (last_check is None or now - last_check > stale_after),
    }
