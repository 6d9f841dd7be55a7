"""Change a setting in bulk (#14 part), on the lab, through the web admin and the real
worker: a reload-level and a restart-level change on two herds, pending_restart seen,
refusals that queue nothing anywhere, a hostile value kept literal, and undo."""

from __future__ import annotations

import pytest

from herds.models import Herd
from instances import probe
from instances.models import Instance, Job, JobKind, JobState
from lab import fleet
from lab import herd as lab_herd
from tests.helpers import wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

URL = "/admin/instances/instance/"
NAME, PORT = "cfg", 5527


@pytest.fixture
def two_herds(lab, lab_servers, request):
    lab_herd.drop(NAME)
    lab_herd.create(NAME, primary=1, replicas=[2], port=PORT)
    drill = request.getfixturevalue("drill")  # discovers srv1–3, finding cfg too
    yield drill, Herd.objects.get(name=NAME)
    lab_herd.drop(NAME)


def members(*herds) -> list[Instance]:
    return list(Instance.objects.with_related().filter(herd__in=herds).order_by("pk"))


def post(admin_client, targets, **data):
    return admin_client.post(
        URL,
        {"action": "change_setting_action", "_selected_action": [i.pk for i in targets], **data},
    )


def change(admin_client, targets, name, value) -> list[Job]:
    before = set(Job.objects.filter(kind=JobKind.SET_PARAMETER).values_list("pk", flat=True))
    response = post(admin_client, targets, name=name, value=value, confirm="yes")
    assert response.status_code == 302, response.content.decode()[:3000]
    jobs = Job.objects.filter(kind=JobKind.SET_PARAMETER).exclude(pk__in=before).order_by("pk")
    return [wait_for_job(j, timeout=60) for j in jobs]


def show(instance: Instance, name: str) -> str:
    _row, _pending, shown = probe.setting(instance.server.hostname, instance.port, name)
    return shown


def test_reload_and_restart_level_changes_on_two_herds_then_undo(
    celery_worker, two_herds, admin_client
):
    targets = members(*two_herds)
    assert len(targets) == 5
    old = {i.pk: show(i, "work_mem") for i in targets}
    old_connections = {i.pk: show(i, "max_connections") for i in targets}

    page = post(admin_client, targets, name="work_mem", value="8MB").content.decode()
    assert page.count("a reload is enough") == 5 and 'id="confirm-setting"' in page
    jobs = change(admin_client, targets, "work_mem", "8MB")
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 5, [j.error for j in jobs]
    assert all(show(i, "work_mem") == "8MB" for i in targets)
    assert all("in effect after a reload" in j.summary for j in jobs)
    assert all(j.params["previous"] == old[j.instance_id] for j in jobs)

    page = post(admin_client, targets, name="max_connections", value="130").content.decode()
    assert page.count("needs a restart") == 5
    jobs = change(admin_client, targets, "max_connections", "130")
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 5, [j.error for j in jobs]
    assert all("takes effect at the next restart" in j.summary for j in jobs)
    for instance in targets:
        assert probe.pending_restart(instance.server.hostname, instance.port) == ["max_connections"]
        assert show(instance, "max_connections") == old_connections[instance.pk]  # not yet
        instance.refresh_from_db()
        assert "max_connections" in instance.pending_restart

    # Undo the work_mem change: the same change with the recorded old values.
    work_mem_jobs = Job.objects.filter(
        kind=JobKind.SET_PARAMETER, params__name="work_mem", state=JobState.SUCCEEDED
    )
    before = set(Job.objects.values_list("pk", flat=True))
    response = admin_client.post(
        "/admin/instances/job/",
        {
            "action": "undo_settings",
            "_selected_action": list(work_mem_jobs.values_list("pk", flat=True)),
        },
    )
    assert response.status_code == 302
    undone = [wait_for_job(j, timeout=60) for j in Job.objects.exclude(pk__in=before)]
    assert len(undone) == 5 and all(j.state == JobState.SUCCEEDED for j in undone)
    assert all(show(i, "work_mem") == old[i.pk] for i in targets)
    # Leave the lab as found: max_connections back to what it was.
    for instance in targets:
        probe.alter_system(
            instance.server.hostname, instance.port, "max_connections", old_connections[instance.pk]
        )


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("no_such_parameter", "1", "is not a parameter of this server"),
        ("max_connections", "lots", "is not a number"),
        ("shared_buffers", "5min", "is not a memory unit"),
        ("wal_level", "loud", "is one of"),
        ("block_size", "16384", "is fixed"),
    ],
)
def test_a_bad_name_or_value_is_refused_everywhere_and_nothing_is_queued(
    two_herds, admin_client, name, value, says
):
    targets = members(*two_herds)
    page = post(admin_client, targets, name=name, value=value).content.decode()
    assert page.count("refused: ") == 5 and says in page
    assert 'id="confirm-setting"' not in page
    # A forged confirmation changes nothing either.
    page = post(admin_client, targets, name=name, value=value, confirm="yes")
    assert page.status_code == 200
    assert "nothing was queued" in page.content.decode()
    assert not Job.objects.filter(kind=JobKind.SET_PARAMETER).exists()


def test_one_silent_instance_stops_the_whole_change(two_herds, admin_client):
    targets = members(*two_herds)
    fleet.server_ns(2).run(["pg_ctlcluster", "15", NAME, "stop"])
    try:
        page = post(admin_client, targets, name="work_mem", value="8MB", confirm="yes")
    finally:
        fleet.server_ns(2).run(["pg_ctlcluster", "15", NAME, "start"])
    text = page.content.decode()
    assert "does not answer now" in text and "nothing was queued" in text
    assert text.count("a reload is enough") == 4
    assert not Job.objects.filter(kind=JobKind.SET_PARAMETER).exists()


def test_a_hostile_value_is_written_literally(celery_worker, two_herds, admin_client):
    [primary] = [i for i in members(two_herds[1]) if i.server.hostname == "127.0.1.1"]
    hostile = "x'; DROP TABLE pg_class; --"
    [job] = change(admin_client, [primary], "application_name", hostile)
    assert job.state == JobState.SUCCEEDED, job.error
    # ALTER SYSTEM wrote it as one literal (quote doubled), and nothing else ran.
    auto = fleet.server_ns(1).folder / "lib" / "15" / NAME / "postgresql.auto.conf"
    assert "application_name = 'x''; DROP TABLE pg_class; --'" in auto.read_text()
    assert fleet.psql(fleet.server_ns(1), PORT, "SELECT count(*) > 0 FROM pg_class") == "t"
    probe.alter_system(primary.server.hostname, primary.port, "application_name", "")
