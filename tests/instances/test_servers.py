"""Discovery of lab servers through the real worker: rows created, changed and gone."""

from __future__ import annotations

import pytest

from herds.models import Herd
from instances import servers
from instances.choices import Role
from instances.jobs import queue
from instances.models import Instance, JobKind, JobState
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment
from tests.helpers import add_lab_server, wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

PORT = 5470


@pytest.fixture(scope="module")
def discherd(lab_servers):
    """Primary on srv1, replicas on srv2 and srv3 (srv3 in another environment: DR)."""
    info = lab_herd.create("discherd", primary=1, replicas=[2, 3], port=PORT)
    yield info
    lab_herd.drop("discherd")


def _discover(servers, user=None):
    created = queue.create_jobs(JobKind.DISCOVER, servers, user=user)
    return [wait_for_job(job, timeout=60) for job in created]


def test_it_discovers_a_primary_and_its_replicas(celery_worker, lab_servers, discherd):
    prod, dr = make_environment("prod"), make_environment("dr")
    servers = [
        add_lab_server(lab_servers[0], prod),
        add_lab_server(lab_servers[1], prod),
        add_lab_server(lab_servers[2], dr),
    ]
    done = _discover(servers)
    assert [job.state for job in done] == [JobState.SUCCEEDED] * 3, [j.error for j in done]

    herd = Herd.objects.get(name="discherd")
    assert herd.environment == prod  # the DR replica's herd is its primary's
    assert (herd.port, herd.pg_version, herd.cluster_name) == (PORT, 15, "discherd")
    rows = {i.server.hostname: i for i in Instance.objects.with_related().filter(herd=herd)}
    assert set(rows) == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}
    primary = rows["127.0.1.1"]
    assert (primary.role, primary.online, primary.upstream) == (Role.PRIMARY, True, None)
    assert primary.last_lsn and primary.effective_data_dir == "/var/lib/postgresql/15/discherd"
    for hostname in ("127.0.1.2", "127.0.1.3"):
        replica = rows[hostname]
        assert (replica.role, replica.online) == (Role.REPLICA, True)
        assert replica.upstream == primary
        assert replica.streams_from == f"127.0.1.1:{PORT}"
        assert replica.lag_bytes is not None
    first = done[0]
    commands = list(first.steps.values_list("command", flat=True))
    assert commands[0] == "pg_lsclusters --json"
    assert f"added discherd@127.0.1.1:{PORT} (primary, version 15)" in first.summary


def test_it_reports_an_instance_removed_behind_its_back(celery_worker, lab_servers, discherd):
    prod = make_environment("prod")
    servers = [add_lab_server(lab_servers[0], prod), add_lab_server(lab_servers[3], prod)]
    _discover(servers)
    # A replica appears on srv4 after the first discovery, then is removed again.
    lab_herd.add_replica("discherd", 4, upstream=1, port=PORT, version="15")
    [job] = _discover([servers[1]])
    assert f"added discherd@127.0.1.4:{PORT}" in job.summary
    replica = Instance.objects.get(server=servers[1], port=PORT)
    assert replica.online and replica.role == Role.REPLICA
    assert replica.upstream.server == servers[0]

    from lab import fleet

    fleet.server_ns(4).run(["pg_dropcluster", "--stop", "15", "discherd"])
    [job] = _discover([servers[1]])
    assert job.state == JobState.SUCCEEDED
    assert f"gone discherd@127.0.1.4:{PORT}" in job.summary
    replica.refresh_from_db()
    assert replica.online is False
    [again] = _discover([servers[1]])
    assert "1 gone" in again.summary and "0 changed" in again.summary


def test_it_fails_discovery_of_an_unreachable_server_clearly(celery_worker, lab_servers):
    prod = make_environment("prod")
    server = add_lab_server(lab_servers[0], prod)
    server.hostname, server.ssh_port = "127.0.1.250", 22
    server.save()
    [job] = _discover([server])
    assert job.state == JobState.FAILED
    assert job.error.startswith("127.0.1.250")
    assert "refused" in job.error
    assert Instance.objects.count() == 0


@pytest.fixture
def neighbour(lab_servers):
    """A second cluster on srv1, beside discherd's primary."""
    lab_herd.drop("discpair")
    info = lab_herd.create("discpair", primary=1, replicas=[], port=PORT + 1)
    yield info
    lab_herd.drop("discpair")


def _kept_sessions(port: int) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'elephaas-health'"
    return int(fleet.psql(fleet.server_ns(1), port, sql))


def test_it_probes_a_servers_clusters_at_once_on_kept_connections(discherd, neighbour):
    first = servers.probe_each("127.0.1.1", [PORT, PORT + 1, 1])
    assert [result is not None for result, _, _ in first] == [True, True, False]
    assert first[1][0].in_recovery is False
    assert "127.0.1.1" in first[2][1] and first[2][2] < 5  # refused at once, said why
    kept = [_kept_sessions(PORT), _kept_sessions(PORT + 1)]
    assert min(kept) >= 1
    again = servers.probe_each("127.0.1.1", [PORT, PORT + 1])
    assert all(result is not None for result, _, _ in again)
    # The second look reused the connections the first kept: no new session.
    assert [_kept_sessions(PORT), _kept_sessions(PORT + 1)] == kept


def test_it_records_each_probe_of_a_discovery_as_a_step(celery_worker, lab_servers, neighbour):
    server = add_lab_server(lab_servers[0], make_environment("prod"))
    [job] = _discover([server])
    assert job.state == JobState.SUCCEEDED, job.error
    probes = list(job.steps.filter(name__startswith="probe discpair"))
    assert len(probes) == 1 and probes[0].ok and probes[0].duration > 0
    assert probes[0].output.startswith("in recovery: False; LSN ")
    assert probes[0].host == f"127.0.1.1:{PORT + 1}"
    seqs = list(job.steps.values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
