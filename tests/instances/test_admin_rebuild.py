"""The rebuild, remaster and init actions' confirmation pages and the jobs they queue
(called directly on InstanceAdmin: wiring them into its actions is a separate change)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore
from django.test import RequestFactory

from instances.admin.rebuild import init_action, rebuild_action, remaster_action
from instances.models import Instance, Job, JobKind, Role
from tests.factories import make_environment, make_herd, make_instance, make_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    env = make_environment("prod")
    herd = make_herd("shop", environment=env, port=5432)
    # Addresses nothing listens on: no worker runs these jobs here.
    servers = [make_server(f"127.0.1.{n}", environment=env) for n in (241, 242, 243, 244)]
    primary = make_instance(herd=herd, server=servers[0], role=Role.PRIMARY, online=True)
    a = make_instance(herd=herd, server=servers[1], upstream=primary, online=True)
    b = make_instance(herd=herd, server=servers[2], upstream=primary, online=False)
    return {"primary": primary, "a": a, "b": b, "servers": servers, "herd": herd}


def call(action, user, instances, **post):
    request = RequestFactory().post("/admin/instances/instance/", {"action": "x", **post})
    request.user = user
    request.session = SessionStore()
    request._messages = FallbackStorage(request)
    model_admin = admin.site._registry[Instance]
    response = action(
        model_admin, request, Instance.objects.filter(pk__in=[i.pk for i in instances])
    )
    if response is not None:
        response.render()
        return response.content.decode()
    return None


def test_it_lists_each_replica_with_its_upstream_before_a_rebuild(admin_user, shop):
    text = call(rebuild_action, admin_user, [shop["a"], shop["b"]])
    assert "Rebuild replicas" in text
    assert f"<td>{shop['a']}</td><td>{shop['primary']}</td>" in text
    assert f"<td>{shop['b']}</td><td>{shop['primary']}</td>" in text
    assert "running: the job stops it (fast) before copying" in text
    assert 'value="rsync"' in text and 'value="pg_basebackup"' in text
    assert not Job.objects.exists()


def test_it_queues_rebuilds_with_the_chosen_method(admin_user, shop):
    done = call(rebuild_action, admin_user, [shop["a"], shop["b"]], confirm="yes", method="rsync")
    assert done is None  # queued: the admin redirects back to the list
    jobs = Job.objects.filter(kind=JobKind.REBUILD)
    assert sorted(jobs.values_list("instance_id", flat=True)) == sorted(
        [shop["a"].pk, shop["b"].pk]
    )
    assert {tuple(sorted(j.params.items())) for j in jobs} == {
        (("force", False), ("max_rate_kb", None), ("method", "rsync"))
    }


def test_it_requires_force_to_rebuild_a_primary_or_an_upstream(admin_user, shop):
    Instance.objects.filter(pk=shop["b"].pk).update(upstream=shop["a"])
    text = call(
        rebuild_action, admin_user, [shop["primary"], shop["a"]], confirm="yes", method="auto"
    )
    assert "tick &#x27;force&#x27;" in text
    assert str(shop["primary"]) in text and "1 replica(s) stream from it" in text
    assert not Job.objects.exists()
    call(rebuild_action, admin_user, [shop["a"]], confirm="yes", method="auto", force="on")
    [job] = Job.objects.all()
    assert job.params["force"] is True


def test_it_offers_only_the_herds_other_instances_as_new_upstream(admin_user, shop):
    other = make_instance(server=shop["servers"][3], role=Role.PRIMARY)
    text = call(remaster_action, admin_user, [shop["b"]])
    assert "Remaster replicas" in text
    offered = f'<option value="{shop["a"].pk}"', f'<option value="{shop["primary"].pk}"'
    assert all(option in text for option in offered)
    assert f'<option value="{shop["b"].pk}"' not in text
    assert f'<option value="{other.pk}"' not in text
    call(remaster_action, admin_user, [shop["b"]], confirm="yes", upstream_id=shop["a"].pk)
    [job] = Job.objects.all()
    assert (job.kind, job.instance_id, job.params) == (
        JobKind.REMASTER,
        shop["b"].pk,
        {"upstream_id": shop["a"].pk},
    )


def test_it_refuses_a_remaster_loop_on_the_page(admin_user, shop):
    Instance.objects.filter(pk=shop["b"].pk).update(upstream=shop["a"])
    text = call(remaster_action, admin_user, [shop["a"]], confirm="yes", upstream_id=shop["b"].pk)
    assert "replication loop" in text
    assert not Job.objects.exists()


def test_it_confirms_then_queues_init_of_a_new_instance(admin_user, shop):
    new = Instance.objects.create(
        herd=shop["herd"], server=shop["servers"][3], role=Role.REPLICA, upstream=shop["primary"]
    )
    text = call(init_action, admin_user, [new])
    assert "Create instances" in text
    assert f"<td>{new}</td><td>replica</td><td>{shop['primary']}</td>" in text
    call(init_action, admin_user, [new], confirm="yes")
    [job] = Job.objects.all()
    assert (job.kind, job.instance_id) == (JobKind.INIT, new.pk)


def test_the_page_names_the_upstream_the_job_will_copy_from(admin_user, shop):
    """Where the two used to differ: the recorded upstream is fenced, and the herd records
    two unfenced primaries, the older one offline. Page and job both ask
    inventory.choose_upstream, so both name the online primary."""
    from instances.rebuild import resolve_upstream

    Instance.objects.filter(pk=shop["primary"].pk).update(fenced=True)
    offline = make_instance(
        herd=shop["herd"], server=shop["servers"][3], role=Role.PRIMARY, online=False
    )
    online = make_instance(
        herd=shop["herd"], server=make_server("127.0.1.245"), role=Role.PRIMARY, online=True
    )
    assert offline.pk < online.pk
    text = call(rebuild_action, admin_user, [shop["a"]])
    job_choice = resolve_upstream(Instance.objects.with_related().get(pk=shop["a"].pk))
    assert job_choice == online
    assert f"<td>{shop['a']}</td><td>{online}</td>" in text
