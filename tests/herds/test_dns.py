"""The DNS layer against the lab's BIND: signed updates, refusals that change nothing, and
Refresh DNS through the real worker."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import threading
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.contrib.messages.storage.fallback import FallbackStorage
from django.test import RequestFactory, override_settings

from herds import dns as elephaas_dns
from herds import dns_records
from herds.admin.refresh_dns import refresh_dns_action
from herds.models import Herd
from instances.choices import Role
from instances.jobs import queue, runner
from instances.models import Job, JobKind, JobState
from tests.factories import make_environment, make_herd, make_instance
from tests.helpers import add_lab_server, wait_for_job

pytestmark = pytest.mark.lab

ZONE = "lab.elephaas.test."


@pytest.fixture
def name(lab):
    """A factory of fresh names in the lab zone (`vh-<random>`), deleted afterwards."""
    made: list[str] = []

    def make(prefix: str = "vh") -> str:
        made.append(f"{prefix}-{secrets.token_hex(4)}")
        return made[-1]

    yield make
    for each in made:
        elephaas_dns.delete_name(each)


def ask_bind(name: str, rdtype: str = "A") -> tuple[int, list[str]]:
    """Straight to BIND with dnspython, not through herds.dns."""
    query = dns.message.make_query(f"{name}.{ZONE}", rdtype)
    response = dns.query.udp(query, "127.0.0.1", port=settings.DNS_PORT, timeout=5)
    values = sorted(rdata.to_text() for rrset in response.answer for rdata in rrset)
    return response.rcode(), values


def test_it_points_a_vhost_at_one_server_then_another(name):
    vhost = name()
    first = elephaas_dns.point_vhost(vhost, "127.0.1.1", "A")
    assert (first.name, first.record_type, first.values, first.previous) == (
        f"{vhost}.{ZONE}",
        "A",
        ("127.0.1.1",),
        (),
    )
    assert first.ttl == settings.DNS_TTL and 0 < first.seconds < settings.DNS_TIMEOUT
    assert elephaas_dns.lookup(vhost) == ["127.0.1.1"]
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])

    second = elephaas_dns.point_vhost(vhost, "127.0.1.2", "A")
    assert second.describe() == f"{vhost}.{ZONE} → 127.0.1.2 (was 127.0.1.1)"
    assert elephaas_dns.lookup(f"{vhost}.{ZONE}") == ["127.0.1.2"]
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.2"])


def test_it_resolves_a_server_name_for_an_a_record(name):
    vhost = name()
    result = elephaas_dns.point_vhost(vhost, "srv2.lab.elephaas.test", "A")
    assert result.values == ("127.0.1.2",)
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.2"])


def test_it_refuses_a_cname_to_an_ip_address_and_changes_nothing(name):
    vhost = name()
    elephaas_dns.point_vhost(vhost, "127.0.1.1", "A")
    with pytest.raises(elephaas_dns.DNSError, match="set ELEPHAAS_DNS_RECORD_TYPE=A"):
        elephaas_dns.point_vhost(vhost, "127.0.1.2", "CNAME")
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])


def test_it_points_a_cname_at_a_server_name_and_back_to_an_a_record(name):
    vhost = name()
    elephaas_dns.point_vhost(vhost, "127.0.1.2", "A")
    result = elephaas_dns.point_vhost(vhost, "srv1.lab.elephaas.test", "CNAME")
    assert result.describe() == f"{vhost}.{ZONE} → srv1.{ZONE} (was 127.0.1.2)"
    assert elephaas_dns.lookup(vhost) == [f"srv1.{ZONE}"]
    # One message deleted the A and added the CNAME: BIND holds only the CNAME.
    assert ask_bind(vhost, "CNAME") == (dns.rcode.NOERROR, [f"srv1.{ZONE}"])
    rcode, answer = ask_bind(vhost, "A")
    assert answer == ["127.0.1.1", f"srv1.{ZONE}"]  # the CNAME and its target's A

    back = elephaas_dns.point_vhost(vhost, "127.0.1.3", "A")
    assert back.previous == (f"srv1.{ZONE}",)
    assert ask_bind(vhost, "CNAME") == (dns.rcode.NOERROR, [])
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.3"])


def test_it_lists_every_replica_under_the_read_only_vhost_then_deletes_it(name):
    ro_vhost = name("ro")
    result = elephaas_dns.set_ro_vhost(ro_vhost, ["127.0.1.3", "127.0.1.2"])
    assert result.values == ("127.0.1.2", "127.0.1.3")
    assert ask_bind(ro_vhost) == (dns.rcode.NOERROR, ["127.0.1.2", "127.0.1.3"])

    one = elephaas_dns.set_ro_vhost(ro_vhost, ["127.0.1.2"])
    assert one.describe() == f"{ro_vhost}.{ZONE} → 127.0.1.2 (was 127.0.1.2, 127.0.1.3)"

    gone = elephaas_dns.set_ro_vhost(ro_vhost, [])
    assert gone.describe() == f"{ro_vhost}.{ZONE} deleted (was 127.0.1.2)"
    assert ask_bind(ro_vhost) == (dns.rcode.NXDOMAIN, [])
    assert elephaas_dns.lookup(ro_vhost) == []


def test_it_refuses_to_send_an_unsigned_update_and_changes_nothing(name):
    vhost = name()
    elephaas_dns.point_vhost(vhost, "127.0.1.1", "A")
    with override_settings(DNS_TSIG_SECRET=""):
        with pytest.raises(elephaas_dns.DNSError, match="no TSIG secret") as info:
            elephaas_dns.point_vhost(vhost, "127.0.1.2", "A")
    assert f"127.0.0.1:{settings.DNS_PORT}" in str(info.value)
    assert f"{vhost}.{ZONE}" in str(info.value)
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])


def test_it_fails_clearly_when_the_update_is_wrongly_signed_and_changes_nothing(name):
    vhost = name()
    elephaas_dns.point_vhost(vhost, "127.0.1.1", "A")
    wrong = base64.b64encode(os.urandom(32)).decode()
    with override_settings(DNS_TSIG_SECRET=wrong):
        with pytest.raises(elephaas_dns.DNSError) as info:
            elephaas_dns.point_vhost(vhost, "127.0.1.2", "A")
    message = str(info.value)
    assert message.startswith(f"DNS server 127.0.0.1:{settings.DNS_PORT}: cannot update {vhost}.")
    assert "refused: NOTAUTH, bad TSIG signature" in message
    assert "elephaas-lab" in message and wrong not in message
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])

    with override_settings(DNS_TSIG_NAME="not-the-lab-key"):
        with pytest.raises(elephaas_dns.DNSError, match="does not know the TSIG key"):
            elephaas_dns.set_ro_vhost(vhost, ["127.0.1.3"])
    assert ask_bind(vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])


def test_it_fails_fast_and_clearly_when_the_dns_port_is_closed(name):
    vhost = name()
    started = time.monotonic()
    with override_settings(DNS_SERVER="127.0.0.1", DNS_PORT=1, DNS_TIMEOUT=2.0):
        with pytest.raises(elephaas_dns.DNSError) as info:
            elephaas_dns.point_vhost(vhost, "127.0.1.1", "A")
    assert time.monotonic() - started < 2.0
    assert str(info.value) == (
        f"DNS server 127.0.0.1:1: cannot query {vhost}.{ZONE}: connection refused: is the "
        f"DNS server running on that address and port?"
    )
    assert ask_bind(vhost) == (dns.rcode.NXDOMAIN, [])


def test_it_gives_up_within_the_timeout_when_the_server_does_not_answer(name):
    """A server that accepts the connection and never answers (hung, or a firewall)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    vhost = name()
    started = time.monotonic()
    try:
        with override_settings(DNS_SERVER="127.0.0.1", DNS_PORT=port, DNS_TIMEOUT=0.5):
            with pytest.raises(elephaas_dns.DNSError) as info:
                elephaas_dns.point_vhost(vhost, "127.0.1.1", "A")
    finally:
        silent.close()
        for conn, _ in accepted:
            conn.close()
    assert time.monotonic() - started < 2.0
    assert str(info.value) == (
        f"DNS server 127.0.0.1:{port}: cannot query {vhost}.{ZONE}: no answer within 0.5 s"
    )


# --- Refresh DNS: the job and the admin action ------------------------------------------------


@pytest.fixture
def orders(lab_servers, name):
    """Herd with a fresh vhost and read-only vhost: primary on srv1, replica on srv2."""
    if settings.DNS_RECORD_TYPE != "A":
        pytest.fail(
            "the lab serves servers by IP address and sets ELEPHAAS_DNS_RECORD_TYPE=A in "
            ".lab/elephaas.env: run `python -m lab up` to rewrite it"
        )
    env = make_environment()
    srv1, srv2 = (add_lab_server(s, env) for s in lab_servers[:2])
    herd = make_herd(environment=env, vhost=name(), ro_vhost=name("ro"))
    primary = make_instance(herd, srv1, Role.PRIMARY, online=True)
    replica = make_instance(herd, srv2, Role.REPLICA, online=True, upstream=primary)
    return herd, primary, replica


@pytest.mark.django_db(transaction=True)
def test_it_refreshes_a_herds_dns_through_the_worker(celery_worker, orders):
    herd, _primary, _replica = orders
    elephaas_dns.point_vhost(herd.vhost, "127.0.1.2", "A")  # stale: the old primary

    [job] = queue.create_jobs(JobKind.REFRESH_DNS, [herd])
    job = wait_for_job(job)

    assert job.state == JobState.SUCCEEDED, job.error
    assert job.worker.endswith(f":{celery_worker['process'].pid}")
    vhost, ro_vhost = f"{herd.vhost}.{ZONE}", f"{herd.ro_vhost}.{ZONE}"
    assert job.summary == (
        f"{vhost} → 127.0.1.1 (was 127.0.1.2)\n{ro_vhost} → 127.0.1.2 (was no record)"
    )
    assert ask_bind(herd.vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])
    assert ask_bind(herd.ro_vhost) == (dns.rcode.NOERROR, ["127.0.1.2"])
    steps = list(job.steps.all())
    assert [s.name for s in steps] == [
        "read the inventory",
        f"point {herd.vhost} at 127.0.1.1",
        f"list 127.0.1.2 under {herd.ro_vhost}",
    ]
    assert all(s.ok for s in steps)
    assert steps[1].host == f"{settings.DNS_SERVER}:{settings.DNS_PORT}"
    assert steps[1].output.startswith(f"{vhost} → 127.0.1.1 (was 127.0.1.2); A, TTL ")

    # Again: the same records, said to be unchanged.
    [again] = queue.create_jobs(JobKind.REFRESH_DNS, [herd])
    again = wait_for_job(again)
    assert again.state == JobState.SUCCEEDED, again.error
    assert again.summary.splitlines()[0] == f"{vhost} → 127.0.1.1 (unchanged)"


@pytest.mark.django_db(transaction=True)
def test_several_queued_refreshes_of_one_herd_collapse_into_one(celery_worker, orders):
    herd, _primary, _replica = orders
    elephaas_dns.point_vhost(herd.vhost, "127.0.1.2", "A")  # stale
    # Four refreshes queued together (before any ran): one updates DNS. (One queued after
    # another started is not collapsed: that one may have read an older inventory.)
    jobs = queue.create_jobs(JobKind.REFRESH_DNS, [herd] * 4)
    done = [wait_for_job(job) for job in jobs]
    assert all(j.state == JobState.SUCCEEDED for j in done), [j.error for j in done]
    updated = [j for j in done if j.steps.filter(name__startswith="point ").exists()]
    collapsed = [j for j in done if j.steps.filter(name="already refreshed").exists()]
    assert len(updated) == 1 and len(collapsed) == 3
    for job in collapsed:
        assert f"DNS was refreshed by job #{updated[0].pk}" in job.summary
    assert ask_bind(herd.vhost) == (dns.rcode.NOERROR, ["127.0.1.1"])
    # A refresh queued after that one ran does its own work (the inventory may have changed).
    [later] = queue.create_jobs(JobKind.REFRESH_DNS, [herd])
    later = wait_for_job(later)
    assert later.steps.filter(name__startswith="point ").exists()


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_refresh_a_split_brain_herd_and_changes_nothing(orders):
    herd, _primary, replica = orders
    elephaas_dns.point_vhost(herd.vhost, "127.0.1.2", "A")
    replica.role, replica.upstream = Role.PRIMARY, None
    replica.save()

    [job] = runner.run_inline(queue.create_jobs(JobKind.REFRESH_DNS, [herd], queue=False))

    assert job.state == JobState.FAILED
    assert job.error.startswith(f"DNS not changed: {herd.name} is in split brain: 2 online ")
    assert ask_bind(herd.vhost) == (dns.rcode.NOERROR, ["127.0.1.2"])
    assert ask_bind(herd.ro_vhost) == (dns.rcode.NXDOMAIN, [])


@pytest.mark.django_db(transaction=True)
def test_it_fails_the_job_clearly_when_dns_refuses_the_update(orders):
    herd, _primary, _replica = orders
    wrong = base64.b64encode(os.urandom(32)).decode()
    with override_settings(DNS_TSIG_SECRET=wrong):
        [job] = runner.run_inline(queue.create_jobs(JobKind.REFRESH_DNS, [herd], queue=False))
    assert job.state == JobState.FAILED
    assert job.error.startswith(f"vhost of {herd.name}: DNS server 127.0.0.1:")
    assert "NOTAUTH" in job.error and wrong not in job.error
    assert job.steps.get(seq=2).ok is False
    assert ask_bind(herd.vhost) == (dns.rcode.NXDOMAIN, [])


def _refresh_page(user, herd):
    request = RequestFactory().post("/admin/herds/herd/", {"action": "refresh_dns_herds"})
    request.user = user
    page = refresh_dns_action(admin.site._registry[Herd], request, Herd.objects.filter(pk=herd.pk))
    return page.render().content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_confirmation_page_shows_the_last_refresh_and_what_it_will_point_to(
    celery_worker, orders, django_user_model
):
    herd, _primary, _replica = orders
    elephaas_dns.point_vhost(herd.vhost, "127.0.1.2", "A")
    alice = django_user_model.objects.create_user("alice", is_staff=True)
    alice.user_permissions.add(Permission.objects.get(codename="refresh_dns"))
    alice = django_user_model.objects.get(pk=alice.pk)

    content = _refresh_page(alice, herd)
    assert f"vhost {herd.vhost}: no Refresh DNS recorded yet; will point to 127.0.1.1" in content
    assert f"read-only vhost {herd.ro_vhost}: no Refresh DNS recorded yet; will list 127.0.1.2" in (
        content
    )
    assert not Job.objects.exists()

    request = RequestFactory().post(
        "/admin/herds/herd/", {"action": "refresh_dns_herds", "confirm": "yes"}
    )
    request.user = alice
    request.session = {}
    request._messages = FallbackStorage(request)
    assert refresh_dns_action(admin.site._registry[Herd], request, Herd.objects.all()) is None
    [job] = Job.objects.all()
    assert (job.kind, job.herd, job.requested_by) == (JobKind.REFRESH_DNS, herd, alice)
    job = wait_for_job(job)
    assert job.state == JobState.SUCCEEDED, job.error

    # What DNS answers comes from that job's record: the page asks no DNS server (here
    # none answers on port 1, and the page still shows the recorded answers at once).
    with override_settings(DNS_PORT=1):
        started = time.monotonic()
        content = _refresh_page(alice, herd)
        assert time.monotonic() - started < 1
    name, ro_name = dns_records.fqdn(herd.vhost), dns_records.fqdn(herd.ro_vhost)
    assert f"vhost {herd.vhost}: {name} → 127.0.1.1 (was 127.0.1.2) (recorded by job #{job.pk}" in (
        content
    )
    assert (
        f"read-only vhost {herd.ro_vhost}: {ro_name} → 127.0.1.2 (was no record) (recorded by"
        in (content)
    )
    assert "will point to 127.0.1.1" in content


@pytest.mark.django_db(transaction=True)
def test_the_confirmation_page_says_when_the_last_refresh_failed(orders, django_user_model):
    herd, _primary, _replica = orders
    alice = django_user_model.objects.create_superuser("alice")
    with override_settings(DNS_PORT=1):
        [job] = runner.run_inline(
            queue.create_jobs(JobKind.REFRESH_DNS, [herd], user=alice, queue=False)
        )
    assert job.state == JobState.FAILED
    content = _refresh_page(alice, herd)
    assert f"vhost {herd.vhost}: last refresh failed (job #{job.pk}" in content
    assert "cannot query" in content or "cannot connect" in content or "refused" in content
