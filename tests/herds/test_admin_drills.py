"""The switchover / failover confirmation pages: the plan per herd, then the jobs."""

from __future__ import annotations

import pytest

from instances.choices import Role
from instances.models import Job, JobKind
from tests.factories import make_environment, make_herd, make_instance, make_server

pytestmark = pytest.mark.django_db

URL = "/admin/herds/herd/"


@pytest.fixture
def herd():
    env = make_environment("prod")
    herd = make_herd("shop", environment=env, port=5432, vhost="shop")
    servers = [make_server(f"127.0.1.{n}", environment=env) for n in (251, 252, 253)]
    primary = make_instance(
        herd=herd, server=servers[0], role=Role.PRIMARY, online=True, last_lsn="0/5000000"
    )
    make_instance(
        herd=herd,
        server=servers[1],
        upstream=primary,
        online=True,
        last_lsn="0/4FFF000",
        replay_lsn="0/4FFF000",
        receive_lsn="0/4FFF000",
    )
    make_instance(
        herd=herd,
        server=servers[2],
        upstream=primary,
        online=True,
        last_lsn="0/5000000",
        replay_lsn="0/5000000",
        receive_lsn="0/5000000",
    )
    return herd, primary


def test_it_shows_the_switchover_plan_then_queues_one_job_per_herd(admin_client, herd):
    shop, primary = herd
    page = admin_client.post(URL, {"action": "switchover_herds", "_selected_action": [shop.pk]})
    assert page.status_code == 200
    text = page.content.decode()
    assert (
        "switch shop over to shop on 127.0.1.253:5432: the replica with the highest "
        "replayed LSN, replayed 0/5000000, 0 bytes behind the primary&#x27;s 0/5000000"
    ) in text
    assert "<code>shop</code> from <code>127.0.1.251</code> to <code>127.0.1.253</code>" in text
    response = admin_client.post(
        URL, {"action": "switchover_herds", "confirm": "yes", "_selected_action": [shop.pk]}
    )
    assert response.status_code == 302
    [job] = Job.objects.all()
    assert job.kind == JobKind.SWITCHOVER and job.herd == shop
    assert job.params == {"expected_primary_id": primary.pk}


def test_it_shows_a_failover_refusal_while_the_primary_is_recorded_up(admin_client, herd):
    shop, _primary = herd
    page = admin_client.post(URL, {"action": "failover_herds", "_selected_action": [shop.pk]})
    text = page.content.decode()
    assert "refused: the primary shop on 127.0.1.251:5432 is up and answering" in text
    assert "Accept data loss" in text


def test_it_refuses_a_forged_failover_post_from_an_operator(client, django_user_model, herd):
    from django.contrib.auth.models import Group

    shop, _primary = herd
    oscar = django_user_model.objects.create_user("oscar", password="x", is_staff=True)
    oscar.groups.add(Group.objects.get(name="operator"))
    client.force_login(oscar)
    page = client.get(URL)
    assert page.status_code == 200 and "failover_herds" not in page.content.decode()
    forged = client.post(
        URL, {"action": "failover_herds", "confirm": "yes", "_selected_action": [shop.pk]}
    )
    assert forged.status_code == 403
    assert not Job.objects.exists()
