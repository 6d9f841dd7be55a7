"""The fleet at a glance on the admin index, and the health filters and badges it links to."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from herds.models import Drill, Herd
from instances.admin.display import (
    ReplicationListFilter,
    herd_health_annotations,
    herd_health_summary,
)
from instances.choices import ReplicationHealth, Role
from instances.health_rules import replication_health, replication_q
from instances.jobs.queue import WAITING_NOTE
from instances.models import HealthSample, Instance, Job, JobKind, JobState
from tests.factories import make_environment, make_herd, make_instance, make_server

pytestmark = pytest.mark.django_db

INDEX_URL = reverse("admin:index")
MB = 1024 * 1024
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def thresholds(settings):
    settings.HEALTH_LAG_BYTES = 16 * MB
    settings.HEALTH_LAG_SECONDS = 60.0
    settings.HEALTH_INTERVAL = 30.0


@pytest.fixture
def replication_filter(monkeypatch):
    """The instance list with ReplicationListFilter, as the lead wires it into the admin."""
    model_admin = admin.site._registry[Instance]
    monkeypatch.setattr(
        model_admin, "list_filter", (*model_admin.list_filter, ReplicationListFilter)
    )


def figures(page: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r'id="fleet-([\w]+)"[^>]*>(\d+)<', page)}


def links(page: str) -> dict[str, str]:
    found = re.findall(r'<a href="([^"]+)" id="fleet-([\w]+)"', page)
    return {key: url.replace("&amp;", "&") for url, key in found}


def build_fleet() -> None:
    """One of each state the dashboard counts."""
    environment = make_environment()
    now = timezone.now()
    # healthy herd: a primary, a streaming, a lagging, a not-streaming and an offline replica
    herd = make_herd(environment=environment)
    primary = make_instance(herd=herd, role=Role.PRIMARY, online=True, last_checked=now)
    for fields in (
        {"upstream_streaming": True, "lag_bytes": 0, "lag_seconds": 0.0},
        {"upstream_streaming": True, "lag_bytes": 20 * MB, "lag_seconds": 40.0},
        {"upstream_streaming": True, "lag_bytes": 0, "lag_seconds": 90.0},
        {"upstream_streaming": False, "lag_bytes": None, "lag_seconds": 0.0},
    ):
        make_instance(herd=herd, upstream=primary, online=True, **fields)
    make_instance(herd=herd, upstream=primary, online=False, lag_bytes=50 * MB)
    # a herd whose primary was failed over and fenced: its replica's upstream is wrong
    herd = make_herd(environment=environment)
    down = make_instance(herd=herd, role=Role.PRIMARY, online=False, fenced=True)
    make_instance(herd=herd, upstream=down, online=True, upstream_streaming=False)
    # its failover: the fence not confirmed yet; and an older one whose fence job found a
    # split brain (the old primary took writes for a minute)
    for started, found in ((now - timedelta(hours=3), True), (now - timedelta(days=9), True)):
        job = Job.objects.create(
            kind=JobKind.FAILOVER, herd=herd, state=JobState.SUCCEEDED, finished_at=started
        )
        Drill.objects.create(
            job=job,
            herd=herd,
            kind=JobKind.FAILOVER,
            started_at=started,
            split_brain_from=started + timedelta(minutes=5) if found else None,
            split_brain_until=started + timedelta(minutes=6) if found else None,
        )
    # split-brain: two online primaries
    herd = make_herd(environment=environment)
    make_instance(herd=herd, role=Role.PRIMARY, online=True)
    make_instance(herd=herd, role=Role.PRIMARY, online=True)
    # never checked
    make_instance(role=Role.UNKNOWN, online=None)
    server = make_server(environment=environment)
    for state, finished in (
        (JobState.RUNNING, None),
        (JobState.FAILED, now - timedelta(hours=1)),
        (JobState.FAILED, now - timedelta(hours=30)),
        (JobState.ERRORED, now - timedelta(hours=2)),
        (JobState.SUCCEEDED, now - timedelta(hours=1)),
    ):
        Job.objects.create(kind=JobKind.DISCOVER, server=server, state=state, finished_at=finished)
    # one the broker did not take (it was down when the job was queued)
    Job.objects.create(
        kind=JobKind.DISCOVER, server=server, state=JobState.QUEUED, dispatch_note=WAITING_NOTE
    )


def grow_fleet(instances: int) -> None:
    environment = make_environment()
    added = 0
    while added < instances:
        herd = make_herd(environment=environment)
        primary = make_instance(herd=herd, role=Role.PRIMARY, online=True)
        added += 1
        for online in (True, False, None, True)[: instances - added]:
            make_instance(herd=herd, upstream=primary, online=online, lag_bytes=20 * MB)
            added += 1


def queries_for(client) -> int:
    client.get(INDEX_URL)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(INDEX_URL)
    assert response.status_code == 200
    return len(captured)


def test_it_shows_the_fleet_at_a_glance(admin_client):
    build_fleet()
    page = admin_client.get(INDEX_URL).content.decode()
    assert "Fleet at a glance: 11 instances" in page
    assert figures(page) == {
        "online": 8,
        "offline": 2,
        "unknown": 1,
        "primaries": 4,
        "replicas": 6,
        "lagging": 2,
        "not_streaming": 1,
        "upstream_gone": 0,
        "upstream_wrong": 1,
        "split_brain": 1,
        "split_brain_found": 1,
        "fence_unconfirmed": 1,
        "jobs_running": 1,
        "jobs_failed": 1,
        "jobs_errored": 1,
        "jobs_waiting": 1,
    }
    # The app list is still there, below.
    assert page.index('id="fleet-dashboard"') < page.index("app-instances")


def test_it_links_each_figure_to_a_list_showing_as_many_rows(admin_client, replication_filter):
    build_fleet()
    page = admin_client.get(INDEX_URL).content.decode()
    shown, urls = figures(page), links(page)
    assert set(urls) == set(shown)
    for key, url in urls.items():
        response = admin_client.get(url)
        assert response.status_code == 200, (key, url)
        assert response.context["cl"].result_count == shown[key], (key, url)


def test_it_flags_health_polling_that_stopped(admin_client):
    make_instance(online=True, last_checked=timezone.now() - timedelta(minutes=10))
    page = admin_client.get(INDEX_URL).content.decode()
    assert "Health polling is late" in page
    Instance.objects.update(last_checked=timezone.now())
    assert "Health polling is late" not in admin_client.get(INDEX_URL).content.decode()


def grow_history(hours: int = 6) -> None:
    """For every instance, a sample every 10 minutes over `hours`; a job and a drill an
    hour per herd: what a fleet's day leaves for the dashboard's pictures."""
    now = timezone.now()
    samples = [
        HealthSample(
            instance_id=pk,
            taken_at=now - timedelta(minutes=10 * step),
            online=step % 7 != 0,
            lag_bytes=None if step % 7 == 0 else (pk * step * 1000) % (40 * MB),
            lag_seconds=float(step),
        )
        for pk in Instance.objects.values_list("pk", flat=True)
        for step in range(hours * 6)
    ]
    HealthSample.objects.bulk_create(samples)
    for herd in Herd.objects.all():
        for hour in range(0, 24, 6):
            at = now - timedelta(hours=hour)
            state = JobState.FAILED if hour % 12 else JobState.SUCCEEDED
            job = Job.objects.create(
                kind=JobKind.SWITCHOVER, herd=herd, state=state, created_at=at, finished_at=at
            )
            Drill.objects.create(job=job, herd=herd, kind=JobKind.SWITCHOVER, started_at=at)


def test_it_costs_the_same_queries_for_10_and_100_instances(admin_client):
    grow_fleet(10)
    grow_history()
    small = queries_for(admin_client)
    HealthSample.objects.all().delete()
    grow_fleet(90)
    grow_history()
    assert Instance.objects.count() == 100 and HealthSample.objects.count() == 100 * 36
    assert queries_for(admin_client) == small


def test_it_hides_the_dashboard_from_users_who_cannot_view_instances(client):
    user = User.objects.create_user("victor", password="x", is_staff=True)
    client.force_login(user)
    make_instance()
    assert 'id="fleet-dashboard"' not in client.get(INDEX_URL).content.decode()
    user.user_permissions.add(Permission.objects.get(codename="view_instance"))
    client.force_login(User.objects.get(pk=user.pk))
    page = client.get(INDEX_URL).content.decode()
    assert 'id="fleet-dashboard"' in page
    # Figures of lists it may not open are left out, and so are their pictures.
    assert "fleet-jobs_failed" not in page and "fleet-split_brain" not in page
    assert 'id="fleet-herds"' not in page and 'id="fleet-day"' not in page
    assert 'id="fleet-lag"' in page


def test_the_filter_classifies_like_the_badge():
    """Every combination of the fields that decide, in the DB and in Python: same answer."""
    herd = make_herd()
    ups = {
        state: make_instance(herd=herd, role=Role.PRIMARY, online=state)
        for state in (True, False, None)
    }
    ups["fenced"] = make_instance(herd=herd, role=Role.PRIMARY, online=False, fenced=True)
    combos = itertools.product(
        (True, False, None),  # online
        (None, True, False, "fenced"),  # upstream online (None: no upstream)
        (True, False, None),  # upstream_streaming
        (None, 0, 20 * MB),  # lag_bytes
        (None, 1.0, 90.0),  # lag_seconds
        (False, True),  # needs_remaster
    )
    for online, upstream, streaming, lag, seconds, remaster in combos:
        make_instance(
            herd=herd,
            online=online,
            upstream=ups[upstream] if upstream is not None else None,
            upstream_streaming=streaming,
            lag_bytes=lag,
            lag_seconds=seconds,
            needs_remaster=remaster,
        )
    rows = list(Instance.objects.select_related("upstream"))
    for state in ReplicationHealth:
        in_db = set(Instance.objects.filter(replication_q(state)).values_list("pk", flat=True))
        in_python = {row.pk for row in rows if replication_health(row) == state}
        assert in_db == in_python, state
    replicas = {row.pk for row in rows if row.role == Role.REPLICA}
    classified = set()
    for state in ReplicationHealth:
        classified |= set(
            Instance.objects.filter(replication_q(state)).values_list("pk", flat=True)
        )
    assert classified == replicas


def test_it_summarises_herds_with_annotations_only():
    environment = make_environment()
    healthy, troubled = make_herd(environment=environment), make_herd(environment=environment)
    primary = make_instance(herd=healthy, role=Role.PRIMARY, online=True)
    make_instance(herd=healthy, upstream=primary, online=True, upstream_streaming=True)
    down = make_instance(herd=troubled, role=Role.PRIMARY, online=False)
    make_instance(herd=troubled, upstream=down, online=True, upstream_streaming=False)
    make_instance(herd=troubled, upstream=down, online=None)
    with CaptureQueriesContext(connection) as captured:
        herds = {h.pk: h for h in Herd.objects.annotate(**herd_health_annotations())}
        summaries = {pk: herd_health_summary(h) for pk, h in herds.items()}
    assert len(captured) == 1
    assert ">all 2 online<" in summaries[healthy.pk]
    assert ">1 offline<" in summaries[troubled.pk]
    assert ">1 not streaming<" in summaries[troubled.pk]
    assert ">1 unknown<" in summaries[troubled.pk]


# --- pictures -------------------------------------------------------------------------------


def tiles(page: str) -> list[tuple[str, str, str]]:
    """(state, herd URL, herd name) of each herd tile, in the order shown."""
    return re.findall(
        r'<a class="fleet-tile fleet-tile-(\w+)" id="fleet-tile-\d+" href="([^"]+)"[^>]*>'
        r"<strong>([^<]*)</strong>",
        page,
    )


def test_it_shows_every_herd_as_a_tile_worst_first(admin_client):
    environment = make_environment()

    def herd_with(name, *members):
        herd = make_herd(name, environment=environment)
        primary = None
        for role, fields in members:
            made = make_instance(herd=herd, role=role, upstream=primary, **fields)
            primary = primary or made
        return herd

    ok = {"online": True, "upstream_streaming": True, "lag_bytes": 0, "lag_seconds": 0.0}
    healthy = herd_with("healthy", (Role.PRIMARY, {"online": True}), (Role.REPLICA, ok))
    lagging = herd_with(
        "lagging", (Role.PRIMARY, {"online": True}), (Role.REPLICA, {**ok, "lag_bytes": 20 * MB})
    )
    degraded = herd_with(
        "degraded", (Role.PRIMARY, {"online": True}), (Role.REPLICA, {"online": False})
    )
    split = make_herd("split", environment=environment)
    make_instance(herd=split, role=Role.PRIMARY, online=True)
    make_instance(herd=split, role=Role.PRIMARY, online=True)
    headless = herd_with("headless", (Role.PRIMARY, {"online": False}))
    empty = make_herd("empty", environment=environment)
    page = admin_client.get(INDEX_URL).content.decode()
    change = lambda herd: reverse("admin:herds_herd_change", args=[herd.pk])  # noqa: E731
    assert tiles(page) == [
        ("split_brain", change(split), "split"),
        ("no_primary", change(headless), "headless"),
        ("degraded", change(degraded), "degraded"),
        ("lagging", change(lagging), "lagging"),
        ("healthy", change(healthy), "healthy"),
        ("empty", change(empty), "empty"),
    ]
    assert "SPLIT-BRAIN (2 primaries)" in page and "all 2 online" in page
    assert f'href="{reverse("admin:herds_herd_topology")}" id="fleet-topology-link"' in page


def test_it_escapes_herd_names_on_tiles(admin_client):
    herd = make_herd()
    Herd.objects.filter(pk=herd.pk).update(name="<b>x</b>")
    page = admin_client.get(INDEX_URL).content.decode()
    assert "<strong>&lt;b&gt;x&lt;/b&gt;</strong>" in page


def lag_rows(page: str) -> list[str]:
    return re.findall(r'<tr class="fleet-lag-row">\s*<td><a href="[^"]+">([^<]+)</a>', page)


def test_it_draws_the_lag_of_the_replicas_that_lagged_most(admin_client, settings):
    settings.HEALTH_SAMPLE_RETENTION = 24
    herd = make_herd("lagz")
    primary = make_instance(herd=herd, role=Role.PRIMARY, online=True)
    replicas = [
        make_instance(herd=herd, upstream=primary, online=True, lag_bytes=n * MB) for n in range(10)
    ]
    now = timezone.now()
    samples = []
    for rank, replica in enumerate(replicas):
        for minutes in range(0, 180, 10):
            samples.append(
                HealthSample(
                    instance=replica,
                    taken_at=now - timedelta(minutes=minutes),
                    online=True,
                    # Its peak: rank MB, an hour ago.
                    lag_bytes=rank * MB if minutes == 60 else 0,
                )
            )
    # Older than the pictures' window: a huge peak that must not count.
    samples.append(
        HealthSample(
            instance=replicas[0], taken_at=now - timedelta(hours=7), online=True, lag_bytes=10**12
        )
    )
    samples.append(HealthSample(instance=primary, taken_at=now, online=True))
    HealthSample.objects.bulk_create(samples)
    page = admin_client.get(INDEX_URL).content.decode()
    expected = [f"lagz on {r.server.hostname}:{r.port}" for r in reversed(replicas[2:])]
    assert lag_rows(page) == expected
    section = page[page.index('id="fleet-lag"') :]
    assert section.count('<svg xmlns="http://www.w3.org/2000/svg" class="sparkline"') == 8
    assert "9.0 MB at" in section and "last 6 h" in section
    assert "per 5 min" in section


def test_it_says_when_no_lag_was_measured(admin_client):
    make_instance(role=Role.PRIMARY, online=True)
    page = admin_client.get(INDEX_URL).content.decode()
    assert "No replica lag measured in the last 6 h" in page


def test_it_narrows_the_window_to_the_retention(admin_client, settings):
    settings.HEALTH_SAMPLE_RETENTION = 2
    replica = make_instance(online=True)
    HealthSample.objects.create(
        instance=replica, taken_at=timezone.now() - timedelta(hours=3), online=True, lag_bytes=5
    )
    page = admin_client.get(INDEX_URL).content.decode()
    assert "No replica lag measured in the last 2 h" in page


def test_each_hour_of_the_jobs_picture_links_to_as_many_jobs(admin_client):
    server = make_server()
    now = timezone.now()
    for hours, state in ((0, JobState.RUNNING), (1, JobState.FAILED), (1, JobState.SUCCEEDED)):
        for _ in range(hours + 1):
            Job.objects.create(
                kind=JobKind.DISCOVER,
                server=server,
                state=state,
                created_at=now - timedelta(hours=hours),
            )
    # Outside the day: not drawn.
    Job.objects.create(kind=JobKind.DISCOVER, server=server, created_at=now - timedelta(hours=30))
    page = admin_client.get(INDEX_URL).content.decode()
    chart = page[page.index('id="fleet-jobs-chart"') :]
    root = ET.fromstring(chart[chart.index("<svg") : chart.index("</svg>") + 6])
    columns = list(root.iter(f"{SVG}a"))
    assert len(columns) == 24
    totals = []
    for column in columns:
        texts = [t.text for t in column.iter(f"{SVG}text") if t.text and t.text.isdigit()]
        shown = int(texts[0]) if texts else 0
        totals.append(shown)
        response = admin_client.get(column.get("href"))
        assert response.status_code == 200
        assert response.context["cl"].result_count == shown, column.get("href")
    assert sum(totals) == 5 and "5 jobs per hour of creation" in page


def test_it_lists_the_days_drills_and_jobs_that_did_not_succeed(admin_client):
    herd = make_herd("shop")
    now = timezone.now()
    job = Job.objects.create(
        kind=JobKind.FAILOVER, herd=herd, state=JobState.SUCCEEDED, created_at=now
    )
    Drill.objects.create(
        job=job,
        herd=herd,
        kind=JobKind.FAILOVER,
        started_at=now - timedelta(hours=2),
        writable_at=now - timedelta(hours=2) + timedelta(seconds=1.5),
        data_lost_bytes=3 * MB,
        data_lost_exact=False,
        split_brain_from=now - timedelta(hours=1),
        outcome="<i>promoted</i> db2",
    )
    old = Job.objects.create(kind=JobKind.SWITCHOVER, herd=herd, state=JobState.SUCCEEDED)
    Drill.objects.create(
        job=old, herd=herd, kind=JobKind.SWITCHOVER, started_at=now - timedelta(days=2)
    )
    Job.objects.create(
        kind=JobKind.RESTART,
        herd=herd,
        state=JobState.ERRORED,
        finished_at=now,
        error="restart of shop failed <here>",
    )
    page = admin_client.get(INDEX_URL).content.decode()
    drills = page[page.index('id="fleet-drills"') :]
    drills = drills[: drills.index("</table>")]
    assert drills.count("<tr>") == 1
    assert "RTO 1.50 s" in drills and "at least 3.0 MB lost" in drills
    assert "SPLIT BRAIN" in drills and "&lt;i&gt;promoted&lt;/i&gt; db2" in drills
    failed = page[page.index('id="fleet-failed-jobs"') :]
    assert "errored" in failed and "restart of shop failed &lt;here&gt;" in failed
