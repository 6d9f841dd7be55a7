"""Seeing the configuration (#14): each instance's non-default settings gathered from its
pg_settings by the real worker's beat task, shown on its page, searched fleet-wide as
`name = value`, and drift between a herd's members highlighted on the herd page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from herds.models import Herd
from instances import probe, settings_gather, tasks
from instances.choices import Role
from instances.jobs import queue, runner
from instances.models import Instance, InstanceSetting, Job, JobKind, JobState
from lab import herd as lab_herd
from tests.elephaas.test_admin_security import client_for, make_user
from tests.factories import make_environment, make_herd, make_instance
from tests.helpers import add_lab_server, wait_for_job

SEARCH = "/admin/instances/instancesetting/"
NAME, PORT = "gset", 5571


@pytest.fixture
def gset(lab, lab_servers):
    lab_herd.drop(NAME)
    lab_herd.create(NAME, primary=1, replicas=[2], port=PORT)
    env = make_environment("prod")
    servers = [add_lab_server(s, env) for s in lab_servers[:2]]
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers, queue=False))
    herd = Herd.objects.get(name=NAME)
    primary = Instance.objects.with_related().get(herd=herd, role=Role.PRIMARY)
    replica = Instance.objects.with_related().get(herd=herd, role=Role.REPLICA)
    yield herd, primary, replica
    lab_herd.drop(NAME)


def rows(instance: Instance) -> dict[str, InstanceSetting]:
    return {r.name: r for r in InstanceSetting.objects.filter(instance=instance)}


def herd_page(client, herd) -> str:
    response = client.get(f"/admin/herds/herd/{herd.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def search(client, q: str = "", **params) -> str:
    response = client.get(SEARCH, {"q": q, **params} if q else params)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.lab
@pytest.mark.django_db(transaction=True)
def test_it_gathers_shows_drift_and_finds_settings_by_value(celery_worker, gset, admin_client):
    herd, primary, replica = gset
    assert primary.online and replica.online and primary.settings_seen_at is None

    # 1. The beat task, run by the real worker, reads what is due (never read first).
    summary = tasks.gather_settings.delay().get(timeout=60)
    assert summary["answered"] >= 2, summary
    on_primary, on_replica = rows(primary), rows(replica)
    assert on_primary["max_connections"].shown == "50"
    assert on_primary["shared_buffers"].setting == "4096"
    assert on_primary["shared_buffers"].unit == "8kB"
    assert on_primary["shared_buffers"].shown == "32MB"
    assert "primary_conninfo" in on_replica and "primary_conninfo" not in on_primary
    assert "work_mem" not in on_primary  # the built-in default is not kept
    primary.refresh_from_db()
    assert primary.settings_seen_at is not None
    assert settings_gather.due(limit=1000).count(primary) == 0  # fresh: not due again

    page = admin_client.get(f"/admin/instances/instance/{primary.pk}/change/").content.decode()
    assert 'id="instance-settings"' in page and "max_connections" in page and "32MB" in page
    assert "every member has the same settings" in herd_page(admin_client, herd)

    # 2. A DBA changes the replica behind the tool's back: drift, highlighted on it only.
    probe.alter_system(replica.server.hostname, replica.port, "work_mem", "8MB")
    since = on_primary["max_connections"].since
    summary = settings_gather.gather([primary, replica])
    assert summary.answered == 2 and summary.written == 1, summary
    assert rows(primary)["max_connections"].since == since  # unchanged: not rewritten
    page = herd_page(admin_client, herd)
    assert "1 setting(s) differ between members" in page
    table = page[page.index('id="herd-drift"') :]
    table = table[: table.index("</table>")]
    assert "work_mem" in table and "8MB" in table and "(default)" in table
    assert table.count('class="drift"') == 1

    found = search(admin_client, "work_mem = 8MB")
    assert replica.address in found and primary.address not in found
    found = search(admin_client, "work_mem = 8192")  # the base unit (kB) works too
    assert replica.address in found

    # 3. A restart-level change through the admin and the worker: the job gathers its
    # instance at once, so the page and the search show it pending without waiting.
    response = admin_client.post(
        "/admin/instances/instance/",
        {
            "action": "change_setting_action",
            "_selected_action": [primary.pk, replica.pk],
            "name": "max_connections",
            "value": "60",
            "confirm": "yes",
        },
    )
    assert response.status_code == 302
    for job in Job.objects.filter(kind=JobKind.SET_PARAMETER, instance__herd=herd):
        assert wait_for_job(job, timeout=60).state == JobState.SUCCEEDED, job.error
    assert rows(primary)["max_connections"].pending_restart
    assert rows(replica)["max_connections"].pending_restart
    assert rows(primary)["max_connections"].shown == "50"  # not yet: needs a restart
    primary.refresh_from_db()
    assert primary.pending_restart == "max_connections"  # the instance list's column
    # Pending on both members alike: no drift; work_mem still is.
    assert "1 setting(s) differ between members" in herd_page(admin_client, herd)
    pending = search(admin_client, pending_restart__exact="1", name="max_connections")
    assert primary.address in pending and replica.address in pending
    assert 'id="setting-values"' in pending and "max_connections across the fleet" in pending
    same = search(admin_client, "max_connections = 50", **{"instance__herd__id__exact": herd.pk})
    assert primary.address in same and replica.address in same
    other = search(admin_client, "max_connections != 50", **{"instance__herd__id__exact": herd.pk})
    assert primary.address not in other

    # 4. The drift fixed from the herd list: the same change on every member of the herd.
    def on_herd(**extra):
        data = {"action": "change_setting_herds", "_selected_action": [herd.pk]}
        return admin_client.post("/admin/herds/herd/", {**data, **extra})

    page = on_herd(name="work_mem", value="8MB").content.decode()
    assert page.count("a reload is enough") == 2 and f'value="{herd.pk}"' in page
    assert on_herd(name="work_mem", value="8MB", confirm="yes").status_code == 302
    jobs = Job.objects.filter(kind=JobKind.SET_PARAMETER, params__value="8MB")
    assert {j.instance_id for j in jobs} == {primary.pk, replica.pk}
    for job in jobs:
        assert wait_for_job(job, timeout=60).state == JobState.SUCCEEDED, job.error
    assert "every member has the same settings" in herd_page(admin_client, herd)

    # 5. An instance that does not answer keeps what was seen: never invented or erased.
    before = rows(replica)
    replica.port = 1  # nothing listens there: a real refused connection
    assert settings_gather.gather([replica]).answered == 0
    assert rows(replica) == before


@pytest.mark.django_db
def test_it_lets_every_role_see_and_nobody_edit():
    herd = make_herd()
    instance = make_instance(herd, role=Role.PRIMARY)
    InstanceSetting.objects.create(
        instance=instance,
        name="work_mem",
        setting="8192",
        unit="kB",
        shown="8MB",
        source="configuration file",
        since=timezone.now(),
    )
    viewer = client_for(make_user("vera", "view_instancesetting"))
    assert "8MB" in viewer.get(SEARCH).content.decode()
    row = InstanceSetting.objects.get()
    assert viewer.get(f"{SEARCH}{row.pk}/delete/").status_code == 403
    assert viewer.post(f"{SEARCH}{row.pk}/change/", {"shown": "1MB"}).status_code == 403
    assert client_for(make_user("olga")).get(SEARCH).status_code == 403
    from django.contrib.auth.models import Group

    for role in ("viewer", "operator", "dba"):
        assert (
            Group.objects.get(name=role)
            .permissions.filter(codename="view_instancesetting")
            .exists()
        ), role


@pytest.mark.django_db
def test_it_costs_the_same_queries_for_10_or_400_rows(admin_client):
    def fill(count: int) -> None:
        herd = make_herd()
        now = timezone.now()
        for _ in range(count // 10):
            instance = make_instance(herd, settings_seen_at=now)
            InstanceSetting.objects.bulk_create(
                InstanceSetting(
                    instance=instance,
                    name=f"p{n}",
                    setting=str(n),
                    shown=str(n),
                    source="configuration file",
                    since=now - timedelta(minutes=n),
                )
                for n in range(10)
            )

    def count(**params) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(SEARCH, params).status_code == 200
        return len(queries)

    fill(10)
    small = [count(), count(q="p1 = 1"), count(name="p3")]
    fill(390)
    assert [count(), count(q="p1 = 1"), count(name="p3")] == small
