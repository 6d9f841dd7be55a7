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


@pytest.mark.lab
@pytest.mark.django_db(transaction=True)
def test_it_plans_a_switchover_from_live_facts_then_queues_one_job_per_herd(admin_client, drill):
    from tests.herds.drill_lab import NAME, PORT, instances

    primary = instances(drill)["127.0.1.1"]
    page = admin_client.post(URL, {"action": "switchover_herds", "_selected_action": [drill.pk]})
    assert page.status_code == 200
    text = page.content.decode()
    assert f"switch {NAME} over to {NAME} on 127.0.1." in text and "0 bytes behind" in text
    for n in (1, 2, 3):
        assert (
            f'<li>{NAME} on 127.0.1.{n}:{PORT}: <strong style="color:#2e7d32">live</strong>' in text
        )
    assert f"<code>{drill.vhost}</code> from <code>127.0.1.1</code> to <code>127.0.1." in text
    # The DBA picks the target among the fit replicas; the plan's pick is the default.
    replicas = {h: i for h, i in instances(drill).items() if h != "127.0.1.1"}
    assert f'<select name="target_{drill.pk}" id="target_{drill.pk}" form="confirm-jobs">' in text
    for replica in replicas.values():
        assert f'<option value="{replica.pk}"' in text
    assert text.count(" selected>") == 1
    chosen = replicas["127.0.1.3"]
    response = admin_client.post(
        URL,
        {
            "action": "switchover_herds",
            "confirm": "yes",
            "_selected_action": [drill.pk],
            f"target_{drill.pk}": str(chosen.pk),
        },
    )
    assert response.status_code == 302
    [job] = Job.objects.filter(kind=JobKind.SWITCHOVER)
    assert job.herd == drill
    assert job.params == {"expected_primary_id": primary.pk, "target_id": chosen.pk}
    Job.objects.filter(pk=job.pk).delete()  # not run: no worker in this test


@pytest.mark.lab
@pytest.mark.django_db(transaction=True)
def test_a_failover_page_says_which_facts_are_live_and_which_were_last_seen(admin_client, drill):
    import time

    from tests.herds.drill_lab import NAME, PORT, stop

    page = admin_client.post(URL, {"action": "failover_herds", "_selected_action": [drill.pk]})
    text = page.content.decode()
    # The primary answers now: refused, from a live fact.
    assert f"refused: the primary {NAME} on 127.0.1.1:{PORT} is up and answering" in text
    assert "Accept data loss" in text and "Skip the WAL salvage" in text
    # Its PostgreSQL goes down; the inventory still says it was up at the last check.
    stop(1, "immediate")
    started = time.monotonic()
    page = admin_client.post(URL, {"action": "failover_herds", "_selected_action": [drill.pk]})
    elapsed = time.monotonic() - started
    text = page.content.decode()
    assert page.status_code == 200 and elapsed < 5, elapsed
    assert "is up and answering" not in text
    assert f'<li>{NAME} on 127.0.1.1:{PORT}: <strong style="color:#ba2121">no answer now (' in text
    assert "last seen answering " in text and " s ago</strong>" in text
    assert f'<li>{NAME} on 127.0.1.2:{PORT}: <strong style="color:#2e7d32">live</strong>' in text
    # A lower bound only, so refused without the tick; the page says what the job reads.
    assert "(primary last seen at " in text and "the true loss is unknown" in text
    assert "It first reads the old primary's end of WAL over SSH" in text
    assert not Job.objects.filter(kind=JobKind.FAILOVER).exists()


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
