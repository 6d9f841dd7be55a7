"""The DNS layer without a DNS server: names, hostile input, what a herd should point at,
and the refusals that happen before anything is sent."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory, override_settings

from herds import dns, dns_records
from herds.admin.refresh_dns import refresh_dns_action
from instances.choices import Role
from tests.factories import make_herd, make_instance, make_server

ZONE = "lab.elephaas.test."
# Port 1 on loopback refuses connections: a test that reaches the network with it gets
# "connection refused", so a different message proves nothing was sent.
NO_SERVER = {"DNS_SERVER": "127.0.0.1", "DNS_PORT": 1, "DNS_ZONE": ZONE}


@pytest.fixture(autouse=True)
def zone():
    with override_settings(DNS_ZONE=ZONE):
        yield


class TestFqdn:
    @pytest.mark.parametrize(
        "name",
        [
            "orders",
            "ORDERS",
            "orders.lab.elephaas.test",
            "orders.lab.elephaas.test.",
            "Orders.Lab.Elephaas.Test.",
        ],
    )
    def test_it_makes_a_vhost_absolute_in_the_zone(self, name):
        assert dns_records.fqdn(name) == "orders.lab.elephaas.test."

    def test_it_keeps_deeper_names_inside_the_zone(self):
        assert dns_records.fqdn("ro.orders.lab.elephaas.test") == "ro.orders.lab.elephaas.test."

    def test_it_accepts_a_zone_setting_without_its_trailing_dot(self):
        with override_settings(DNS_ZONE="Lab.Elephaas.Test"):
            assert dns_records.fqdn("orders") == "orders.lab.elephaas.test."

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "or ders",
            " orders",
            "orders ",
            "orders\n",
            "orders\t",
            "orders;rm -rf /",
            "orders;",
            "'orders'",
            '"orders"',
            "$(id)",
            "`id`",
            "orders&&id",
            "orders|id",
            "orders\x00",
            "ordérs",
            "*",
            "*.lab.elephaas.test",
            "_orders",
            "orders/1",
            "orders@x",
            "-orders",
            "orders-",
            "a..lab.elephaas.test",
            ".orders",
            "x" * 64,
            ".".join(["a" * 60] * 5),
        ],
    )
    def test_it_refuses_hostile_or_invalid_names(self, name):
        with pytest.raises(dns_records.DNSNameError) as info:
            dns_records.fqdn(name)
        assert isinstance(info.value, ValueError) and isinstance(info.value, dns_records.DNSError)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize(
        "name",
        [
            "orders.example.com",
            "orders.example.com.",
            "orders.",
            "orders.lab.elephaas.test.evil.com",
            "orderslab.elephaas.test",
            "lab.elephaas.test",
            "lab.elephaas.test.",
            "elephaas.test",
        ],
    )
    def test_it_refuses_names_outside_the_zone_or_its_apex(self, name):
        with pytest.raises(dns_records.DNSNameError, match=r"zone lab\.elephaas\.test\."):
            dns_records.fqdn(name)

    def test_it_says_how_to_write_a_name_outside_the_zone(self):
        with pytest.raises(dns_records.DNSNameError) as info:
            dns_records.fqdn("orders.example.com")
        assert str(info.value) == (
            "“orders.example.com” is not in the zone lab.elephaas.test., the only zone "
            "ElepHaaS updates: write the vhost as one label (“orders”) or in full "
            "(“orders.lab.elephaas.test”)"
        )

    def test_it_names_the_offending_character(self):
        with pytest.raises(dns_records.DNSNameError, match="contains a space"):
            dns_records.fqdn("or ders")
        with pytest.raises(dns_records.DNSNameError, match="contains “;”"):
            dns_records.fqdn("orders;")

    def test_it_refuses_text_that_is_not_a_string(self):
        with pytest.raises(dns_records.DNSNameError, match="must be text"):
            dns_records.fqdn(None)


class TestRefusalsBeforeSending:
    def test_it_refuses_a_cname_to_an_ip_address_and_says_to_use_a(self):
        with override_settings(**NO_SERVER), pytest.raises(dns.DNSError) as info:
            dns.point_vhost("orders", "127.0.1.1", "CNAME")
        assert str(info.value) == (
            "cannot point orders.lab.elephaas.test. at 127.0.1.1 with a CNAME: a CNAME needs "
            "a host name, and this server is recorded by its IP address; set "
            "ELEPHAAS_DNS_RECORD_TYPE=A to write A records"
        )

    def test_it_refuses_an_unknown_record_type(self):
        with override_settings(**NO_SERVER), pytest.raises(dns.DNSError, match="use CNAME or A"):
            dns.point_vhost("orders", "127.0.1.1", "MX")

    def test_it_refuses_an_ipv6_server_for_an_a_record(self):
        with override_settings(**NO_SERVER), pytest.raises(dns.DNSError, match="IPv6"):
            dns.point_vhost("orders", "::1", "A")

    @pytest.mark.parametrize("hostname", ["db1;id", "db 1", "$(id)", "db1\n.example.com"])
    def test_it_refuses_a_hostile_server_host_name(self, hostname):
        with override_settings(**NO_SERVER), pytest.raises(dns_records.DNSNameError):
            dns.point_vhost("orders", hostname, "CNAME")

    def test_it_never_sends_an_unsigned_update(self):
        with override_settings(**NO_SERVER, DNS_TSIG_SECRET=""), pytest.raises(dns.DNSError) as e:
            dns.point_vhost("orders", "127.0.1.1", "A")
        assert str(e.value) == (
            "DNS server 127.0.0.1:1: cannot update orders.lab.elephaas.test.: no TSIG secret "
            "configured (set ELEPHAAS_DNS_TSIG_SECRET or _FILE): ElepHaaS never sends "
            "unsigned DNS updates"
        )

    def test_it_refuses_a_secret_that_is_not_base64_without_showing_it(self):
        secret = "not base64 at all!"
        with (
            override_settings(**NO_SERVER, DNS_TSIG_SECRET=secret),
            pytest.raises(dns.DNSError, match="not valid base64") as info,
        ):
            dns.set_ro_vhost("orders-ro", ["127.0.1.2"])
        assert secret not in str(info.value)

    def test_it_refuses_an_unsupported_tsig_algorithm(self):
        with (
            override_settings(**NO_SERVER, DNS_TSIG_SECRET="c2VjcmV0", DNS_TSIG_ALGORITHM="rot13"),
            pytest.raises(dns.DNSError, match="“rot13” .* is not supported"),
        ):
            dns.point_vhost("orders", "127.0.1.1", "A")


class TestDNSResult:
    def test_it_describes_a_move(self):
        result = dns_records.DNSResult(
            "orders.lab.elephaas.test.", "A", ("127.0.1.1",), ("127.0.1.2",)
        )
        assert result.describe() == "orders.lab.elephaas.test. → 127.0.1.1 (was 127.0.1.2)"
        assert result.value == "127.0.1.1" and result.changed

    def test_it_describes_a_new_name_an_unchanged_one_and_a_deletion(self):
        name = "ro.lab.elephaas.test."
        new = dns_records.DNSResult(name, "A", ("127.0.1.2", "127.0.1.3"))
        assert new.describe() == f"{name} → 127.0.1.2, 127.0.1.3 (was no record)"
        same = dns_records.DNSResult(name, "A", ("127.0.1.2",), ("127.0.1.2",))
        assert same.describe() == f"{name} → 127.0.1.2 (unchanged)"
        gone = dns_records.DNSResult(name, "A", (), ("127.0.1.2",))
        assert gone.describe() == f"{name} deleted (was 127.0.1.2)"


def node(hostname: str, role: str, online: bool | None = True, port: int = 5432, **flags):
    return SimpleNamespace(
        role=role,
        online=online,
        port=port,
        fenced=flags.get("fenced", False),
        needs_rebuild=flags.get("needs_rebuild", False),
        server=SimpleNamespace(hostname=hostname),
    )


def herd(vhost: str = "orders", ro_vhost: str = "orders-ro"):
    return SimpleNamespace(name="orders", vhost=vhost, ro_vhost=ro_vhost)


class TestDesiredRecords:
    def test_it_points_the_vhost_at_the_online_primary_and_lists_online_replicas(self):
        instances = [
            node("127.0.1.3", Role.REPLICA),
            node("127.0.1.1", Role.PRIMARY),
            node("127.0.1.2", Role.REPLICA),
            node("127.0.1.4", Role.REPLICA, online=False),
            node("127.0.1.5", Role.REPLICA, online=None),
            node("127.0.1.6", Role.REPLICA, fenced=True),
            node("127.0.1.7", Role.REPLICA, needs_rebuild=True),
            node("127.0.1.8", Role.UNKNOWN),
        ]
        desired = dns_records.desired_records(herd(), instances)
        assert desired["primary"] == "127.0.1.1"
        assert desired["primary_instance"] is instances[1]
        assert desired["replicas"] == ["127.0.1.2", "127.0.1.3"]
        assert desired["refusal"] == ""
        assert desired["reason"] == (
            "orders: vhost → 127.0.1.1 (the online primary 127.0.1.1:5432); "
            "read-only vhost → 127.0.1.2, 127.0.1.3 (2 online replicas)"
        )

    def test_it_lists_a_server_once_even_with_two_replicas_on_it(self):
        instances = [
            node("127.0.1.1", Role.PRIMARY),
            node("127.0.1.2", Role.REPLICA, port=5432),
            node("127.0.1.2", Role.REPLICA, port=5433),
        ]
        assert dns_records.desired_records(herd(), instances)["replicas"] == ["127.0.1.2"]

    def test_it_refuses_a_herd_without_a_primary(self):
        desired = dns_records.desired_records(herd(), [node("127.0.1.2", Role.REPLICA)])
        assert desired["primary"] is None
        assert desired["refusal"] == (
            "orders has no recorded primary: run discovery or a health check first"
        )
        assert desired["replicas"] == ["127.0.1.2"]

    def test_it_refuses_a_split_brain_naming_both_primaries(self):
        instances = [node("127.0.1.1", Role.PRIMARY), node("127.0.1.2", Role.PRIMARY)]
        desired = dns_records.desired_records(herd(), instances)
        assert desired["primary"] is None
        assert desired["refusal"] == (
            "orders is in split brain: 2 online primaries (127.0.1.1:5432, 127.0.1.2:5432); "
            "fence the one clients must not write to, then refresh DNS"
        )
        assert desired["reason"].startswith("orders: vhost: refused (orders is in split brain")

    def test_it_refuses_a_fenced_primary(self):
        desired = dns_records.desired_records(
            herd(), [node("127.0.1.1", Role.PRIMARY, fenced=True)]
        )
        assert desired["primary"] is None
        assert "is fenced" in desired["refusal"]
        assert "127.0.1.1:5432" in desired["refusal"]

    def test_it_follows_the_unfenced_primary_when_the_old_one_is_fenced(self):
        instances = [
            node("127.0.1.1", Role.PRIMARY, fenced=True),
            node("127.0.1.4", Role.PRIMARY),
        ]
        desired = dns_records.desired_records(herd(), instances)
        assert (desired["primary"], desired["refusal"]) == ("127.0.1.4", "")

    @pytest.mark.parametrize(("online", "word"), [(False, "offline"), (None, "not checked yet")])
    def test_it_refuses_a_primary_not_known_to_be_online(self, online, word):
        desired = dns_records.desired_records(
            herd(), [node("127.0.1.1", Role.PRIMARY, online=online)]
        )
        assert desired["primary"] is None
        assert desired["refusal"] == (
            f"the primary of orders (127.0.1.1:5432) is {word}: check it (or fail over) before "
            f"pointing DNS at it"
        )

    def test_it_deletes_the_read_only_vhost_when_no_replica_is_online(self):
        instances = [node("127.0.1.1", Role.PRIMARY), node("127.0.1.2", Role.REPLICA, False)]
        desired = dns_records.desired_records(herd(), instances)
        assert desired["replicas"] == []
        assert desired["reason"].endswith("read-only vhost → no record (no online replica)")

    def test_it_says_when_the_herd_has_no_names(self):
        desired = dns_records.desired_records(herd("", ""), [node("127.0.1.1", Role.PRIMARY)])
        assert desired["reason"] == "orders: no vhost nor read-only vhost set"

    @pytest.mark.django_db
    def test_it_reads_a_herds_own_instances_from_the_inventory(self):
        orders = make_herd(name="orders", vhost="orders", ro_vhost="orders-ro")
        primary = make_server(hostname="db1.example.test", environment=orders.environment)
        replica = make_server(hostname="db2.example.test", environment=orders.environment)
        make_instance(orders, primary, Role.PRIMARY, online=True)
        make_instance(orders, replica, Role.REPLICA, online=True)
        make_instance(make_herd(), role=Role.PRIMARY, online=True)  # another herd's
        desired = dns_records.desired_records(orders)
        assert (desired["primary"], desired["replicas"]) == (
            "db1.example.test",
            ["db2.example.test"],
        )


@pytest.mark.django_db
def test_the_admin_action_refuses_a_user_without_the_permission(django_user_model):
    from django.contrib import admin

    from herds.models import Herd

    request = RequestFactory().post("/admin/herds/herd/", {"action": "refresh_dns_herds"})
    request.user = django_user_model.objects.create_user("victor", is_staff=True)
    with pytest.raises(PermissionDenied):
        refresh_dns_action(admin.site._registry[Herd], request, Herd.objects.all())
    request.user = AnonymousUser()
    with pytest.raises(PermissionDenied):
        refresh_dns_action(admin.site._registry[Herd], request, Herd.objects.all())
