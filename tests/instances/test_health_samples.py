"""Health samples: what each sweep keeps for the dashboard's lag pictures, in one INSERT,
and what it prunes, in one DELETE; and, against the lab, what a real sweep of a real herd
leaves in the samples and in the herd's topology (lag, timeline, a stopped replica, a
replica promoted behind ElepHaaS's back)."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from herds.admin.topology import nodes_by_herd
from herds.models import Herd
from herds.topology import EdgeKind, NodeState, layout
from instances import health
from instances.models import HealthSample, Instance, Role
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment, make_herd, make_instance, make_server
from tests.helpers import add_lab_server

# Nothing listens there: each probe is refused at once, a real sweep without the lab.
CLOSED_PORTS = 61001


def statements(captured, verb: str) -> list[str]:
    table = HealthSample._meta.db_table
    return [q["sql"] for q in captured if q["sql"].startswith(f"{verb} ") and table in q["sql"]]


def unreachable_fleet(count: int) -> list[Instance]:
    herd = make_herd()
    server = make_server(hostname="127.0.0.1", environment=herd.environment)
    first = make_instance(herd=herd, server=server, role=Role.PRIMARY, port=CLOSED_PORTS)
    others = [
        make_instance(herd=herd, server=server, upstream=first, port=CLOSED_PORTS + n)
        for n in range(1, count)
    ]
    return [first, *others]


@pytest.mark.django_db
@pytest.mark.parametrize("count", [3, 40])
def test_it_keeps_one_sample_per_instance_in_one_insert(count):
    instances = unreachable_fleet(count)
    with CaptureQueriesContext(connection) as captured:
        summary = health.sweep()
    assert summary.instances == count and summary.samples == count
    assert len(statements(captured, "INSERT")) == 1
    assert len(statements(captured, "DELETE")) == 1
    samples = list(HealthSample.objects.all())
    assert {s.instance_id for s in samples} == {i.pk for i in instances}
    # What the sweep saw: nothing answered, so nothing was measured.
    assert all(not s.online and s.lag_bytes is None and s.lag_seconds is None for s in samples)
    assert len({s.taken_at for s in samples}) == 1


@pytest.mark.django_db
def test_it_prunes_samples_older_than_the_retention(settings):
    settings.HEALTH_SAMPLE_RETENTION = 2
    [instance] = unreachable_fleet(1)
    now = timezone.now()
    old = HealthSample.objects.create(
        instance=instance, taken_at=now - timedelta(hours=3), online=True, lag_bytes=1
    )
    recent = HealthSample.objects.create(
        instance=instance, taken_at=now - timedelta(hours=1), online=True, lag_bytes=1
    )
    summary = health.sweep()
    assert summary.samples_pruned == 1
    kept = set(HealthSample.objects.values_list("pk", flat=True))
    assert old.pk not in kept and recent.pk in kept and len(kept) == 2


# --- against the lab -----------------------------------------------------------------------

NAME = "samples"
PORT = 5544
MB = 1024 * 1024


@pytest.fixture(scope="module")
def cascade(lab_servers):
    """Primary on srv1, a replica on srv2, and srv3 cascading from srv2."""
    lab_herd.drop(NAME)
    info = lab_herd.create(NAME, primary=1, replicas=[2], port=PORT)
    lab_herd.add_replica(NAME, 3, upstream=2, port=PORT, version=info["version"])
    lab_herd.wait_streaming(2, PORT, 1)
    yield info
    lab_herd.drop(NAME)


@pytest.fixture
def inventory(lab_servers, cascade) -> dict[str, Instance]:
    environment = make_environment("prod")
    servers = [add_lab_server(server, environment) for server in lab_servers[:3]]
    herd = Herd.objects.create(
        name=NAME, environment=environment, port=PORT, pg_version=int(cascade["version"])
    )
    primary = Instance.objects.create(herd=herd, server=servers[0], role=Role.PRIMARY)
    replica = Instance.objects.create(
        herd=herd, server=servers[1], role=Role.REPLICA, upstream=primary
    )
    cascading = Instance.objects.create(
        herd=herd, server=servers[2], role=Role.REPLICA, upstream=replica
    )
    return {"srv1": primary, "srv2": replica, "srv3": cascading}


def server_timeline(number: int) -> int:
    """The timeline as the server itself says, read outside ElepHaaS."""
    sql = (
        "SELECT CASE WHEN pg_is_in_recovery() "
        "THEN (SELECT received_tli FROM pg_stat_wal_receiver) "
        "ELSE (SELECT timeline_id FROM pg_control_checkpoint()) END"
    )
    return int(fleet.psql(fleet.server_ns(number), PORT, sql))


def topology_of(herd: Herd):
    return layout(nodes_by_herd([herd.pk])[herd.pk], herd.environment.name)


def sweep_until(done, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health.sweep()
        if done():
            return
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.5)


@pytest.mark.lab
@pytest.mark.django_db
def test_a_real_sweep_keeps_samples_and_draws_lag_and_timeline(inventory, admin_client):
    fleet.psql(
        fleet.server_ns(1),
        PORT,
        "CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t SELECT generate_series(1, 1000)",
    )

    def streaming() -> bool:
        rows = {i.server.hostname: i for i in Instance.objects.select_related("server")}
        return all(rows[k].upstream_streaming for k in ("127.0.1.2", "127.0.1.3"))

    sweep_until(streaming, "streaming")
    herd = inventory["srv1"].herd
    rows = {i.server.hostname: i for i in Instance.objects.select_related("server")}
    for number in (1, 2, 3):
        row = rows[f"127.0.1.{number}"]
        assert row.online is True and row.timeline == server_timeline(number)
    latest = HealthSample.objects.order_by("-taken_at").first().taken_at
    samples = {s.instance_id: s for s in HealthSample.objects.filter(taken_at=latest)}
    assert set(samples) == {i.pk for i in inventory.values()}
    assert samples[inventory["srv1"].pk].lag_bytes is None  # a primary has none
    for key in ("srv2", "srv3"):
        sample = samples[inventory[key].pk]
        assert sample.online and sample.lag_bytes is not None and sample.lag_bytes < MB
        assert sample.lag_bytes == Instance.objects.get(pk=inventory[key].pk).lag_bytes

    picture = topology_of(herd)
    assert {(e.source, e.target, e.kind) for e in picture.edges} == {
        (inventory["srv1"].pk, inventory["srv2"].pk, EdgeKind.STREAMING),
        (inventory["srv2"].pk, inventory["srv3"].pk, EdgeKind.STREAMING),
    }
    assert picture.placed(inventory["srv3"].pk).column == 2
    assert picture.placed(inventory["srv3"].pk).node.timeline == server_timeline(3)
    svg = admin_client.get(reverse("admin:herds_herd_topology_svg", args=[herd.pk]))
    text = svg.content.decode()
    assert f"PRIMARY · timeline {server_timeline(1)}" in text
    assert re.search(r"● online</tspan> · lag [0-9.]+ (bytes|kB), \d+ s</text>", text)

    # A replica stopped outside ElepHaaS: its sample says offline with no lag, and its
    # edge is drawn broken.
    version = inventory["srv1"].herd.pg_version
    fleet.server_ns(3).run(["pg_ctlcluster", str(version), NAME, "stop", "-m", "fast"])
    try:
        health.sweep()
        latest = HealthSample.objects.filter(instance=inventory["srv3"]).latest("taken_at")
        assert (latest.online, latest.lag_bytes) == (False, None)
        picture = topology_of(herd)
        assert picture.placed(inventory["srv3"].pk).state == NodeState.OFFLINE
        [edge] = [e for e in picture.edges if e.target == inventory["srv3"].pk]
        assert edge.kind == EdgeKind.REPLICA_OFFLINE
    finally:
        fleet.start_cluster(fleet.server_ns(3), str(version), NAME)


@pytest.mark.lab
@pytest.mark.django_db
def test_a_replica_promoted_behind_our_back_shows_its_new_timeline_and_the_split_brain(
    inventory, admin_client
):
    health.sweep()
    before = Instance.objects.get(pk=inventory["srv1"].pk).timeline
    version = inventory["srv1"].herd.pg_version
    # pg_ctlcluster waits for the promotion; no checkpoint is asked for.
    fleet.server_ns(2).run(["pg_ctlcluster", str(version), NAME, "promote"])
    health.sweep()
    promoted = Instance.objects.get(pk=inventory["srv2"].pk)
    # Read from the WAL file name: right at once, not at the next checkpoint.
    assert promoted.role == Role.PRIMARY and promoted.timeline == before + 1
    picture = topology_of(inventory["srv1"].herd)
    assert picture.split_brain and picture.banner == "SPLIT-BRAIN: 2 primaries"
    assert picture.placed(inventory["srv2"].pk).state == NodeState.SPLIT_BRAIN
    page = admin_client.get(reverse("admin:herds_herd_change", args=[inventory["srv1"].herd_id]))
    assert "SPLIT-BRAIN: 2 primaries" in page.content.decode()
