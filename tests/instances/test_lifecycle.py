"""Instance actions through the real worker on the lab: start, stop, restart, reload,
promote; idempotent repeats; a mixed batch; the confirmation page."""

from __future__ import annotations

import pytest

from instances import probe
from instances.choices import Role
from instances.jobs import queue, runner
from instances.models import Instance, Job, JobKind, JobState
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment, make_herd, make_instance, make_server
from tests.helpers import add_lab_server, wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

PORT = 5490


@pytest.fixture
def acts(lab_servers):
    """Herd `acts`: primary on srv1, replica on srv2; discovered into the inventory."""
    lab_herd.create("acts", primary=1, replicas=[2], port=PORT)
    env = make_environment("prod")
    servers = [add_lab_server(s, env) for s in lab_servers[:3]]
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers[:2], queue=False))
    primary = Instance.objects.with_related().get(server=servers[0], port=PORT)
    replica = Instance.objects.with_related().get(server=servers[1], port=PORT)
    assert (primary.role, replica.role) == (Role.PRIMARY, Role.REPLICA)
    yield primary, replica, servers
    lab_herd.drop("acts")


def run(kind, instances, **params):
    created = queue.create_jobs(kind, instances, params=params)
    return [wait_for_job(job, timeout=120) for job in created]


def test_it_stops_and_starts_a_replica_idempotently(celery_worker, acts):
    _primary, replica, _servers = acts
    [job] = run(JobKind.STOP, [replica], mode="fast")
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary == f"acts on 127.0.1.2:{PORT} stopped (fast)"
    replica.refresh_from_db()
    assert replica.online is False
    with pytest.raises(probe.ProbeError):
        probe.probe("127.0.1.2", PORT)
    assert [s.command for s in job.steps.all() if s.command][:2] == [
        "pg_ctlcluster 15 acts status",
        "pg_ctlcluster --mode fast 15 acts stop",
    ]

    [again] = run(JobKind.STOP, [replica])
    assert again.state == JobState.SUCCEEDED
    assert again.summary.endswith("was already stopped: nothing to do")

    [job] = run(JobKind.START, [replica])
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary.endswith("started: accepting connections as a replica (in recovery)")
    replica.refresh_from_db()
    assert (replica.online, replica.role) == (True, Role.REPLICA)
    assert probe.probe("127.0.1.2", PORT).in_recovery is True

    [again] = run(JobKind.START, [replica])
    assert again.summary.endswith("was already running, as a replica (in recovery): nothing to do")


def _start_time(instance):
    conn = probe.connect(instance.server.hostname, instance.port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_postmaster_start_time()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_it_restarts_and_reloads_a_primary(celery_worker, acts):
    primary, _replica, _servers = acts
    before = _start_time(primary)
    [job] = run(JobKind.RESTART, [primary], mode="fast")
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary.endswith("restarted: accepting connections as a primary")
    assert _start_time(primary) > before

    loaded = probe.conf_load_time(primary.server.hostname, PORT)
    [job] = run(JobKind.RELOAD, [primary])
    assert job.state == JobState.SUCCEEDED, job.error
    assert probe.conf_load_time(primary.server.hostname, PORT) > loaded


def test_a_smart_restart_ends_elephaas_own_health_sessions_first(celery_worker, acts):
    """A smart shutdown waits for every client: the health sweep's kept connection (held
    here as a sweep holds it) would make the restart wait until pg_ctl gave up."""
    _primary, replica, _servers = acts
    probe.probe(replica.server.hostname, PORT, keep=True)  # kept, idle, as by a sweep
    before = _start_time(replica)
    [job] = run(JobKind.RESTART, [replica], mode="smart")
    assert job.state == JobState.SUCCEEDED, job.error
    ended = job.steps.get(name="end ElepHaaS's own monitoring sessions")
    assert ended.output == "1 ended"
    assert job.duration < 30, job.duration
    assert _start_time(replica) > before
    probe.forget_kept(replica.server.hostname, PORT)


def test_it_runs_a_mixed_batch_where_one_fails_and_the_others_succeed(celery_worker, acts):
    primary, replica, servers = acts
    # A row for a cluster that is not on srv3: removed behind ElepHaaS's back.
    ghost = make_instance(herd=primary.herd, server=servers[2], port=PORT, role=Role.REPLICA)
    done = run(JobKind.START, [primary, ghost, replica])
    states = {job.instance_id: job for job in done}
    assert states[primary.pk].state == JobState.SUCCEEDED
    assert states[replica.pk].state == JobState.SUCCEEDED
    failed = states[ghost.pk]
    assert failed.state == JobState.FAILED
    assert failed.error.startswith("127.0.1.3")
    assert "acts" in failed.error and "does not exist" in failed.error
    assert len({job.batch for job in done}) == 1
    ghost.refresh_from_db()
    assert ghost.online is None  # never claimed a state that was not checked


def test_it_promotes_a_replica_only_when_two_primaries_are_avoided_or_accepted(celery_worker, acts):
    primary, replica, _servers = acts
    [refused] = run(JobKind.PROMOTE, [replica])
    assert refused.state == JobState.FAILED
    assert refused.error.startswith(f"acts on 127.0.1.1:{PORT} is still up as primary")
    assert probe.probe("127.0.1.2", PORT).in_recovery is True

    [stopped] = run(JobKind.STOP, [primary], mode="fast")
    assert stopped.state == JobState.SUCCEEDED
    [job] = run(JobKind.PROMOTE, [replica])
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary.startswith(f"acts on 127.0.1.2:{PORT} promoted: now a primary at LSN")
    assert probe.probe("127.0.1.2", PORT).in_recovery is False
    replica.refresh_from_db()
    assert (replica.role, replica.upstream_id, replica.online) == (Role.PRIMARY, None, True)
    [again] = run(JobKind.PROMOTE, [replica])
    assert again.summary.endswith("is already a primary: nothing to do")


def test_it_refuses_to_start_a_fenced_instance(celery_worker, acts):
    _primary, replica, _servers = acts
    Instance.objects.filter(pk=replica.pk).update(fenced=True)
    [job] = run(JobKind.RESTART, [replica])
    assert job.state == JobState.FAILED
    assert "is fenced" in job.error and job.steps.count() == 0


def test_a_restart_checks_the_fence_marker_in_its_own_command(celery_worker, acts):
    """The inventory's flag was cleared by hand, the marker a failover left is still
    there: the restart command itself refuses (one command: nothing can fence it between
    a check and the restart), and the instance was not restarted."""
    _primary, replica, _servers = acts
    version = str(replica.effective_pg_version)
    marker = fleet.server_ns(2).folder / "lib" / version / "acts.elephaas-fenced"
    marker.write_text("fenced: job 7\n")
    try:
        before = _start_time(replica)
        [job] = run(JobKind.RESTART, [replica], mode="fast")
        assert job.state == JobState.FAILED
        assert job.error == (
            f"acts on 127.0.1.2:{PORT} is fenced on its server (fenced: job 7 "
            f"(/var/lib/postgresql/{version}/acts.elephaas-fenced)): "
            "refusing to restart it; rebuild it as a replica, which lifts the fence"
        )
        [step] = job.steps.all()
        assert step.name == "restart (fast)" and step.exit_status == 97 and not step.ok
        assert _start_time(replica) == before
    finally:
        marker.unlink()
    [job] = run(JobKind.RESTART, [replica], mode="fast")
    assert job.state == JobState.SUCCEEDED, job.error
    assert [s.name for s in job.steps.all()] == [
        "restart (fast)",
        "wait until accepting connections",
    ]
    assert _start_time(replica) > before


def test_it_confirms_exactly_the_selected_instances_then_queues_their_jobs(admin_client):
    env = make_environment("prod")
    herd = make_herd("shop", environment=env, port=5432)
    # Addresses nothing listens on: if a worker picks the jobs up, they fail harmlessly.
    servers = [make_server(f"127.0.1.{n}", environment=env) for n in (251, 252, 253)]
    primary = make_instance(herd=herd, server=servers[0], role=Role.PRIMARY, online=True)
    replica = make_instance(herd=herd, server=servers[1], upstream=primary, online=True)
    other = make_instance(herd=herd, server=servers[2], upstream=primary, online=True)
    url = "/admin/instances/instance/"
    page = admin_client.post(
        url, {"action": "stop_instances", "_selected_action": [primary.pk, replica.pk]}
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert "Stop instances" in text
    assert str(primary) in text and str(replica) in text and str(other) not in text
    assert "primary with 2 replica(s) attached" in text
    assert 'value="immediate"' in text

    response = admin_client.post(
        url,
        {
            "action": "stop_instances",
            "confirm": "yes",
            "mode": "immediate",
            "_selected_action": [primary.pk, replica.pk],
        },
    )
    assert response.status_code == 302
    queued = Job.objects.filter(kind=JobKind.STOP)
    assert sorted(queued.values_list("instance_id", flat=True)) == sorted([primary.pk, replica.pk])
    assert {tuple(j.params.items()) for j in queued} == {(("mode", "immediate"),)}
    assert queued.values("batch").distinct().count() == 1
    assert {j.requested_by_name for j in queued} == {"admin"}


def test_it_requires_the_two_primaries_tick_to_promote_beside_a_live_primary(admin_client):
    env = make_environment("prod")
    herd = make_herd("shop", environment=env, port=5432)
    servers = [make_server(f"127.0.1.{n}", environment=env) for n in (251, 252)]
    primary = make_instance(herd=herd, server=servers[0], role=Role.PRIMARY, online=True)
    replica = make_instance(herd=herd, server=servers[1], upstream=primary, online=True)
    url = "/admin/instances/instance/"
    form = {"action": "promote_instances", "confirm": "yes", "_selected_action": [replica.pk]}
    page = admin_client.post(url, form)
    assert page.status_code == 200
    assert "tick &#x27;I accept two primaries&#x27;" in page.content.decode()
    assert not Job.objects.exists()
    response = admin_client.post(url, {**form, "allow_two_primaries": "on"})
    assert response.status_code == 302
    [job] = Job.objects.all()
    assert job.params == {"allow_two_primaries": True}


def test_it_refreshes_a_batch_page_while_its_jobs_are_active(admin_client):
    env = make_environment("prod")
    server = make_server("127.0.1.251", environment=env)
    [job] = queue.create_jobs(JobKind.CHECK_SERVER, [server], queue=False)
    url = f"/admin/instances/job/?batch={job.batch}"
    assert 'http-equiv="refresh"' in admin_client.get(url).content.decode()
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
    page = admin_client.get(url).content.decode()
    assert 'http-equiv="refresh"' not in page
    assert admin_client.get("/admin/instances/job/?batch=not-a-uuid").status_code in (200, 302)
