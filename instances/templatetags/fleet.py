"""The fleet at a glance, on the admin index: counts that link to the filtered lists, and
pictures: herds as tiles coloured by health, the lag of the replicas that lagged most over
the last hours (from the health samples), the jobs and drills of the last day.

A fixed number of queries whatever the fleet size (tests/instances/test_dashboard.py
holds this): one aggregate over instances, one over jobs, one count of split-brain herds,
one of split brains found by fence jobs in the last week; one for the herd tiles (counts
as correlated subqueries), three for the lag pictures (the worst replicas, their rows,
their samples in time buckets), three for the day's jobs (per hour and state), drills and
failures. Each part is left out, with its queries, for users who may not open its lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import template
from django.conf import settings
from django.db import models
from django.db.models import Count, F, Max, Min, Q
from django.db.models.functions import TruncHour
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe

from herds.models import Drill, Herd
from instances import charts
from instances.admin.display import change_urls, herd_health_annotations
from instances.admin.jobs import STATE_COLOURS
from instances.choices import HerdHealth, ReplicationHealth, Role
from instances.health_rules import herd_health, replication_q
from instances.models import HealthSample, Instance, Job, JobState, correlated_count
from instances.wal import format_bytes, format_seconds

register = template.Library()

RED, ORANGE, GREY = "#ba2121", "#e65100", "#777"
ERRORED_COLOUR = STATE_COLOURS[JobState.ERRORED]
FAILED_WINDOW = timedelta(hours=24)
SPLIT_BRAIN_WINDOW = timedelta(days=7)
# Queued jobs the broker did not take when they were created (queue.publish's note).
WAITING_Q = Q(state=JobState.QUEUED, dispatch_note__gt="")
# Health polling is late when its last check is older than this many intervals.
STALE_INTERVALS = 3
# The lag pictures: this far back (at most the samples' retention), in this many time
# buckets (the worst lag of each), for this many replicas.
LAG_WINDOW = timedelta(hours=6)
LAG_BUCKETS = 72
WORST_REPLICAS = 8
DAY = timedelta(hours=24)
# Tiles carry white text: each colour is at least 4.5:1 against white.
HERD_COLOURS = {
    HerdHealth.SPLIT_BRAIN: "#7f0000",
    HerdHealth.NO_PRIMARY: "#ba2121",
    HerdHealth.DEGRADED: "#ba2121",
    HerdHealth.LAGGING: "#b54300",
    HerdHealth.UNKNOWN: "#616161",
    HerdHealth.HEALTHY: "#2e7d32",
    HerdHealth.EMPTY: "#757575",
}
SEVERITY = {state: rank for rank, state in enumerate(HerdHealth)}
# Bottom-up order of the parts of a column of the jobs picture.
JOB_STACK = (
    JobState.SUCCEEDED,
    JobState.RUNNING,
    JobState.QUEUED,
    JobState.CANCELLED,
    JobState.FAILED,
    JobState.ERRORED,
)


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


# --- pictures -------------------------------------------------------------------------------


def _tile_text(state: HerdHealth, row: dict[str, Any]) -> str:
    if state == HerdHealth.SPLIT_BRAIN:
        return f"SPLIT-BRAIN ({row['online_primaries']} primaries)"
    if state == HerdHealth.DEGRADED:
        parts = []
        if row["health_offline"]:
            parts.append(f"{row['health_offline']} offline")
        if row["health_broken"]:
            parts.append(f"{row['health_broken']} not streaming")
        return ", ".join(parts)
    if state == HerdHealth.LAGGING:
        return f"{row['health_lagging']} lagging"
    if state == HerdHealth.UNKNOWN:
        return f"{row['health_unknown']} not checked"
    if state == HerdHealth.HEALTHY:
        return f"all {row['health_total']} online"
    return state.label


def herd_tiles() -> list[dict[str, Any]]:
    """Every herd as a tile, worst first: one query (correlated counts per herd)."""
    online_primaries = correlated_count(
        Instance.objects.filter(role=Role.PRIMARY, online=True), "herd"
    )
    rows = (
        Herd.objects.annotate(online_primaries=online_primaries, **herd_health_annotations())
        .values(
            "pk",
            "name",
            "environment__name",
            "online_primaries",
            "health_total",
            "health_offline",
            "health_unknown",
            "health_lagging",
            "health_broken",
        )
        .order_by()
    )
    change = change_urls("admin:herds_herd_change")
    tiles = []
    for row in rows:
        state = herd_health(
            total=row["health_total"],
            offline=row["health_offline"],
            broken=row["health_broken"],
            lagging=row["health_lagging"],
            unknown=row["health_unknown"],
            online_primaries=row["online_primaries"],
        )
        text = _tile_text(state, row)
        tiles.append(
            {
                "key": row["pk"],
                "name": row["name"],
                "environment": row["environment__name"],
                "state": state.value,
                "colour": HERD_COLOURS[state],
                "text": text,
                "title": f"{row['name']} ({row['environment__name']}): {state.label}, {text}",
                "url": change(row["pk"]),
            }
        )
    tiles.sort(key=lambda t: (SEVERITY[HerdHealth(t["state"])], t["environment"], t["name"]))
    return tiles


class EpochBucket(models.Func):
    """The number of the `size`-second time bucket a timestamp falls in."""

    template = "floor(extract(epoch from %(expressions)s) / %(size)d)::bigint"
    output_field = models.BigIntegerField()

    def __init__(self, expression: Any, size: int) -> None:
        super().__init__(expression, size=int(size))


def _lag_text(lag_bytes: int | None, lag_seconds: float | None) -> str:
    parts = []
    if lag_bytes is not None:
        parts.append(format_bytes(lag_bytes))
    if lag_seconds is not None:
        parts.append(format_seconds(lag_seconds))
    return ", ".join(parts) or "?"


def lag_history(now: datetime) -> dict[str, Any]:
    """The replicas whose lag peaked highest over the window, each with a sparkline of
    its worst lag per time bucket: three queries whatever the fleet or the window."""
    window = min(LAG_WINDOW, timedelta(hours=settings.HEALTH_SAMPLE_RETENTION))
    since = now - window
    size = max(int(window.total_seconds() // LAG_BUCKETS), 1)
    # Aggregated by instance alone, then joined for the few it keeps: grouping the window's
    # samples by joined columns cost 7 times as much (480 against 67 ms for 216,000
    # samples of 300 replicas on the lab machine).
    worst = list(
        HealthSample.objects.filter(taken_at__gte=since, lag_bytes__isnull=False)
        .values("instance_id")
        .annotate(peak=Max("lag_bytes"), peak_seconds=Max("lag_seconds"))
        .order_by("-peak", F("peak_seconds").desc(nulls_last=True), "instance_id")[:WORST_REPLICAS]
    )
    ids = [row["instance_id"] for row in worst]
    instances = Instance.objects.select_related("herd", "server").in_bulk(ids) if ids else {}
    worst = [row for row in worst if row["instance_id"] in instances]
    buckets: dict[int, list[charts.Point]] = {row["instance_id"]: [] for row in worst}
    if worst:
        series = (
            HealthSample.objects.filter(instance_id__in=list(buckets), taken_at__gte=since)
            .annotate(bucket=EpochBucket("taken_at", size))
            .values("instance_id", "bucket")
            .annotate(lag=Max("lag_bytes"), offline=Count("pk", filter=Q(online=False)))
            .order_by()
        )
        for point in series:
            buckets[point["instance_id"]].append(
                charts.Point(
                    at=point["bucket"] * size + size / 2,
                    value=point["lag"],
                    offline=bool(point["offline"]),
                )
            )
    threshold = settings.HEALTH_LAG_BYTES
    change = change_urls("admin:instances_instance_change")
    rows = []
    for row in worst:
        instance = instances[row["instance_id"]]
        label = instance.label
        points = buckets[row["instance_id"]]
        peak_at = max(
            (p for p in points if p.value is not None), key=lambda p: p.value, default=None
        )
        svg = charts.sparkline(
            points,
            start=since.timestamp(),
            end=now.timestamp(),
            top=max(row["peak"], threshold),
            threshold=threshold,
            title=f"Replication lag of {label} over the last {window_text(window)}",
            gap=2.5 * size,
            width=300,
        )
        rows.append(
            {
                "label": label,
                "url": change(row["instance_id"]),
                # Built by charts.sparkline, which escapes its one text.
                "svg": mark_safe(svg),
                "now": _lag_text(instance.lag_bytes, instance.lag_seconds)
                if instance.online
                else "offline",
                "peak": format_bytes(row["peak"]),
                "peak_at": datetime.fromtimestamp(peak_at.at, tz=now.tzinfo)
                if peak_at is not None
                else None,
                "over": row["peak"] > threshold,
            }
        )
    return {
        "rows": rows,
        "window": window_text(window),
        "bucket": f"{size / 60:g} min" if size >= 60 else f"{size} s",
        "threshold": format_bytes(threshold),
    }


def window_text(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g} h"


def day_of_jobs(now: datetime) -> dict[str, Any]:
    """The last 24 hours' jobs per hour and state, as stacked columns linking to the jobs
    list of each hour: one query."""
    zone = timezone.get_current_timezone()
    current = timezone.localtime(now, zone).replace(minute=0, second=0, microsecond=0)
    first = current - timedelta(hours=23)
    counts: dict[tuple[datetime, str], int] = {}
    for row in (
        Job.objects.filter(created_at__gte=first)
        .annotate(hour=TruncHour("created_at", tzinfo=zone))
        .values("hour", "state")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        counts[(timezone.localtime(row["hour"], zone), row["state"])] = row["n"]
    jobs = reverse("admin:instances_job_changelist")
    columns = []
    total = 0
    for index in range(24):
        hour = first + timedelta(hours=index)
        per_state = [(counts.get((hour, state), 0), state) for state in JOB_STACK]
        total += sum(n for n, _ in per_state)
        said = ", ".join(f"{n} {JobState(state).label}" for n, state in per_state if n)
        query = urlencode(
            {
                "created_at__gte": hour.isoformat(sep=" "),
                "created_at__lt": (hour + timedelta(hours=1)).isoformat(sep=" "),
            }
        )
        columns.append(
            charts.Column(
                label=f"{hour:%H}:00" if index % 3 == 0 else "",
                url=f"{jobs}?{query}",
                title=f"{hour:%H}:00–{hour + timedelta(hours=1):%H}:00: {said or 'no job'}",
                parts=tuple((n, STATE_COLOURS[state]) for n, state in per_state),
            )
        )
    svg = charts.stacked_columns(
        columns, title="Jobs of the last 24 hours, per hour and outcome", width=720, height=110
    )
    return {
        # Built by charts.stacked_columns, which escapes every text.
        "svg": mark_safe(svg),
        "total": total,
        "legend": [(JobState(state).label, STATE_COLOURS[state]) for state in JOB_STACK],
    }


def failed_jobs(now: datetime, limit: int = 8) -> list[dict[str, Any]]:
    """The last day's jobs that did not succeed, latest first: one query."""
    jobs = (
        Job.objects.filter(
            finished_at__gte=now - DAY,
            state__in=[JobState.FAILED, JobState.ERRORED, JobState.CANCELLED],
        )
        .only("pk", "kind", "state", "target_label", "error", "finished_at")
        .order_by("-finished_at", "-pk")[:limit]
    )
    return [
        {
            "job": job,
            "colour": STATE_COLOURS[job.state],
        }
        for job in jobs
    ]


def _data_lost(drill: Drill) -> str:
    if drill.data_lost_bytes is None:
        return ""
    if drill.data_lost_exact:
        return f"{format_bytes(drill.data_lost_bytes)} lost (proved)"
    return f"at least {format_bytes(drill.data_lost_bytes)} lost"


def drills_of_the_day(now: datetime, limit: int = 10) -> list[dict[str, Any]]:
    """The last day's switchovers and failovers with their outcome: one query."""
    drills = (
        Drill.objects.filter(started_at__gte=now - DAY)
        .select_related("herd", "job")
        .order_by("-started_at")[:limit]
    )
    return [
        {
            "drill": drill,
            "state": drill.job.get_state_display(),
            "colour": STATE_COLOURS[drill.job.state],
            "rto": drill.rto_seconds,
            "lost": _data_lost(drill),
        }
        for drill in drills
    ]


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
    may_see_herds = user.has_perm("herds.view_herd")
    may_see_jobs = user.has_perm("instances.view_job")
    return {
        "show": True,
        "total": c["total"],
        "rows": rows,
        "last_check": last_check,
        "stale": bool(c["total"]) and (last_check is None or now - last_check > stale_after),
        "tiles": herd_tiles() if may_see_herds else None,
        "topology_url": reverse("admin:herds_herd_topology") if may_see_herds else "",
        "lag": lag_history(now),
        "jobs_day": day_of_jobs(now) if may_see_jobs else None,
        "failed_jobs": failed_jobs(now) if may_see_jobs else None,
        "drills": drills_of_the_day(now) if user.has_perm("herds.view_drill") else None,
        "state_colours": STATE_COLOURS,
    }
