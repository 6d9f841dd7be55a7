"""The management commands `make demo` and configuration management use, on the lab:
add_server (pins the host key it checks), discover (runs its jobs here, in parallel),
set_vhost (a Refresh DNS job run here), acknowledge_dr (the demo's DR copy)."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from herds import dns
from herds.models import DRCandidate, Herd
from instances.choices import JobOrigin, Role
from instances.models import Instance, Job, JobKind, JobState, Server
from lab import herd as lab_herd

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

NAME, PORT = "mgmt", 5561


@pytest.fixture
def mgmt(lab_servers):
    lab_herd.drop(NAME)
    lab_herd.create(NAME, primary=1, replicas=[2], port=PORT)
    yield lab_servers[:2]
    lab_herd.drop(NAME)


def manage(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_it_adds_discovers_and_points_dns_as_the_demo_does(mgmt):
    for server in mgmt:
        said = manage(
            "add_server",
            server.hostname,
            "--environment",
            "prod",
            "--port",
            str(server.ssh_port),
            "--fingerprint",
            server.host_key_fingerprint,
        )
        assert server.hostname in said
    assert Server.objects.filter(hostname__in=[s.hostname for s in mgmt]).count() == 2
    with pytest.raises(CommandError, match="already in the inventory"):
        manage(
            "add_server",
            mgmt[0].hostname,
            "--environment",
            "prod",
            "--port",
            str(mgmt[0].ssh_port),
            "--fingerprint",
            mgmt[0].host_key_fingerprint,
        )

    found = manage("discover", *(s.hostname for s in mgmt))
    assert f"added {NAME}@{mgmt[0].hostname}:{PORT} (primary, version 15)" in found
    assert f"added {NAME}@{mgmt[1].hostname}:{PORT} (replica, version 15)" in found
    jobs = Job.objects.filter(kind=JobKind.DISCOVER)
    assert {(j.state, j.origin) for j in jobs} == {(JobState.SUCCEEDED, JobOrigin.CLI)}
    primary = Instance.objects.get(herd__name=NAME, server__hostname=mgmt[0].hostname)
    replica = Instance.objects.get(herd__name=NAME, server__hostname=mgmt[1].hostname)
    assert (primary.role, replica.role, replica.upstream_id) == (
        Role.PRIMARY,
        Role.REPLICA,
        primary.pk,
    )

    said = manage("set_vhost", NAME, NAME, "--ro-vhost", f"{NAME}-ro")
    assert Herd.objects.get(name=NAME).vhost == NAME
    assert dns.lookup(NAME) == [mgmt[0].hostname] and dns.lookup(f"{NAME}-ro") == [mgmt[1].hostname]
    assert NAME in said
    dns.delete_name(NAME)
    dns.delete_name(f"{NAME}-ro")

    # The DR copy the demo acknowledges: only a replica of that herd, and once.
    said = manage("acknowledge_dr", NAME, mgmt[1].hostname, "--note", "drill copy")
    assert said == f"{replica.label} acknowledged as a DR candidate of {NAME}\n"
    manage("acknowledge_dr", NAME, mgmt[1].hostname, "--priority", "2")
    [candidate] = DRCandidate.objects.filter(herd__name=NAME)
    assert (candidate.instance_id, candidate.priority) == (replica.pk, 2)
    with pytest.raises(CommandError, match="is recorded as primary, not a replica"):
        manage("acknowledge_dr", NAME, mgmt[0].hostname)
    with pytest.raises(CommandError, match="0 instances of herd 'mgmt' on '127.0.1.250'"):
        manage("acknowledge_dr", NAME, "127.0.1.250")
    assert DRCandidate.objects.count() == 1


def test_it_names_servers_it_does_not_know(mgmt):
    with pytest.raises(CommandError, match="not in the inventory: 127.0.1.250"):
        manage("discover", "127.0.1.250")
