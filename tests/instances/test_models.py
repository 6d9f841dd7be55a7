"""Server and Instance: defaults, derived values, topology rules."""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.test import override_settings

from herds.models import Herd
from instances.models import Instance, Role, Server
from instances.validators import sha256_fingerprint
from tests.factories import (
    make_dr_candidate,
    make_environment,
    make_herd,
    make_instance,
    make_server,
)

pytestmark = pytest.mark.django_db

ED25519_BLOB = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(32)
ED25519_KEY = base64.b64encode(ED25519_BLOB).decode()


def errors_of(obj) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        obj.full_clean()
    return info.value.message_dict


class TestServer:
    @override_settings(SSH_DEFAULT_PORT=2222, SSH_DEFAULT_USER="pgadmin")
    def test_it_takes_its_ssh_defaults_from_settings(self):
        server = Server(hostname="db1.example.test", environment=make_environment())
        assert (server.ssh_port, server.ssh_user) == (2222, "pgadmin")

    def test_it_normalises_the_hostname(self):
        server = make_server(hostname="DB1.Example.TEST")
        assert server.hostname == "db1.example.test"

    def test_it_refuses_the_same_host_in_another_case(self):
        make_server(hostname="db1.example.test")
        server = Server(hostname="DB1.example.test", environment=make_environment())
        assert "hostname" in errors_of(server)

    @pytest.mark.parametrize("hostname", ["db1;reboot", "db 1", "$(id)", "db1\n", "-oProxy"])
    def test_it_rejects_hostile_hostnames(self, hostname):
        server = Server(hostname=hostname, environment=make_environment())
        assert "hostname" in errors_of(server)

    def test_it_rejects_a_hostile_ssh_user(self):
        server = Server(hostname="db1", environment=make_environment(), ssh_user="pg;id")
        assert "ssh_user" in errors_of(server)

    def test_it_accepts_a_consistent_pinned_key(self):
        server = Server(
            hostname="db1",
            environment=make_environment(),
            host_key_type="ssh-ed25519",
            host_key=ED25519_KEY,
            host_key_fingerprint=sha256_fingerprint(ED25519_KEY),
        )
        server.full_clean()
        assert server.is_pinned

    def test_it_wants_all_host_key_fields_or_none(self):
        server = Server(hostname="db1", environment=make_environment(), host_key=ED25519_KEY)
        assert "set all three" in " ".join(errors_of(server)["__all__"])

    def test_it_rejects_a_fingerprint_of_another_key(self):
        server = Server(
            hostname="db1",
            environment=make_environment(),
            host_key_type="ssh-ed25519",
            host_key=ED25519_KEY,
            host_key_fingerprint="SHA256:" + "A" * 43,
        )
        message = " ".join(errors_of(server)["host_key_fingerprint"])
        assert sha256_fingerprint(ED25519_KEY) in message

    def test_it_rejects_a_type_that_is_not_the_keys(self):
        server = Server(
            hostname="db1",
            environment=make_environment(),
            host_key_type="ssh-rsa",
            host_key=ED25519_KEY,
            host_key_fingerprint=sha256_fingerprint(ED25519_KEY),
        )
        assert "ssh-ed25519 key" in " ".join(errors_of(server)["host_key_type"])

    def test_it_declares_the_pin_host_key_permission(self):
        assert Permission.objects.filter(
            content_type__app_label="instances", codename="pin_host_key"
        ).exists()


class TestInstanceDefaults:
    def test_it_copies_port_and_version_from_its_herd(self):
        instance = make_instance(herd=make_herd(port=5433, pg_version=16))
        assert (instance.port, instance.pg_version) == (5433, 16)

    def test_it_copies_them_in_clean_for_forms(self):
        herd = make_herd(port=5433)
        instance = Instance(herd=herd, server=make_server(), role=Role.PRIMARY)
        instance.full_clean()
        assert instance.port == 5433

    def test_it_keeps_an_explicit_port_and_version(self):
        instance = make_instance(herd=make_herd(port=5433, pg_version=16), port=6000, pg_version=17)
        assert (instance.port, instance.pg_version) == (6000, 17)

    def test_it_derives_the_debian_data_directory(self):
        herd = make_herd(name="billing", pg_version=15, data_root="/var/lib/postgresql/")
        instance = make_instance(herd=herd)
        assert instance.effective_data_dir == "/var/lib/postgresql/15/billing"
        assert instance.effective_cluster_name == "billing"

    def test_it_follows_the_herds_cluster_name_and_its_own_version(self):
        herd = make_herd(name="billing", cluster_name="main", data_root="/srv/pg")
        instance = make_instance(herd=herd, pg_version=16)
        assert instance.effective_data_dir == "/srv/pg/16/main"

    def test_it_uses_a_data_directory_override(self):
        instance = make_instance(data_dir="/data/pg/billing/")
        assert instance.effective_data_dir == "/data/pg/billing"

    @pytest.mark.parametrize("data_dir", ["/data/$(id)", "/data/../etc", "data", "/a b", "/a;b"])
    def test_it_rejects_hostile_data_directories(self, data_dir):
        instance = make_instance()
        instance.data_dir = data_dir
        assert "data_dir" in errors_of(instance)

    def test_it_rejects_a_malformed_lsn(self):
        instance = make_instance()
        instance.last_lsn = "0/0; drop"
        assert "last_lsn" in errors_of(instance)

    def test_it_prints_herd_and_address(self):
        herd = make_herd(name="billing")
        instance = make_instance(herd=herd, server=make_server(hostname="db7"), port=5432)
        assert str(instance) == "billing@db7:5432"


class TestInstanceUniqueness:
    def test_it_refuses_two_instances_on_one_server_port(self):
        first = make_instance(port=5432)
        second = Instance(herd=make_herd(), server=first.server, port=5432)
        assert "Another instance on this server already uses this port." in " ".join(
            errors_of(second)["__all__"]
        )

    def test_the_database_refuses_it_too(self):
        first = make_instance(port=5432)
        with pytest.raises(IntegrityError), transaction.atomic():
            make_instance(server=first.server, port=5432)

    def test_it_allows_the_same_port_on_another_server(self):
        first = make_instance(port=5432)
        make_instance(herd=first.herd, port=5432).full_clean()

    def test_it_refuses_two_clusters_in_one_data_directory(self):
        herd = make_herd(name="billing")
        first = make_instance(herd=herd, port=5432)
        other_herd = make_herd(name="orders", cluster_name="billing", environment=herd.environment)
        second = Instance(herd=other_herd, server=first.server, port=5433)
        message = " ".join(errors_of(second)["data_dir"])
        assert "/var/lib/postgresql/15/billing" in message


class TestTopology:
    def test_it_accepts_a_replica_of_its_herds_primary(self):
        primary = make_instance(role=Role.PRIMARY)
        replica = make_instance(herd=primary.herd, upstream=primary)
        replica.full_clean()

    def test_it_accepts_a_cascading_replica(self):
        primary = make_instance(role=Role.PRIMARY)
        middle = make_instance(herd=primary.herd, upstream=primary)
        make_instance(herd=primary.herd, upstream=middle).full_clean()

    def test_it_refuses_an_upstream_in_another_herd(self):
        other = make_instance(role=Role.PRIMARY)
        replica = make_instance()
        replica.upstream = other
        message = " ".join(errors_of(replica)["upstream"])
        assert other.herd.name in message and replica.herd.name in message

    def test_it_refuses_itself_as_upstream(self):
        replica = make_instance()
        replica.upstream = replica
        assert errors_of(replica)["upstream"] == ["An instance cannot be its own upstream."]

    def test_it_refuses_an_upstream_for_a_primary(self):
        primary = make_instance(role=Role.PRIMARY)
        other = make_instance(herd=primary.herd)
        primary.upstream = other
        assert "A primary has no upstream" in " ".join(errors_of(primary)["upstream"])

    def test_the_database_refuses_a_primary_with_an_upstream(self):
        replica = make_instance()
        with pytest.raises(IntegrityError), transaction.atomic():
            make_instance(herd=replica.herd, role=Role.PRIMARY, upstream=replica)

    def test_the_database_refuses_its_own_upstream(self):
        replica = make_instance()
        with pytest.raises(IntegrityError), transaction.atomic():
            Instance.objects.filter(pk=replica.pk).update(upstream=replica)

    def test_it_refuses_a_replication_loop(self):
        primary = make_instance(role=Role.PRIMARY)
        first = make_instance(herd=primary.herd, upstream=primary)
        second = make_instance(herd=primary.herd, upstream=first)
        first.upstream = second
        assert "replication loop" in " ".join(errors_of(first)["upstream"])

    def test_it_refuses_moving_a_dr_candidate_to_another_herd(self):
        primary = make_instance(role=Role.PRIMARY)
        replica = make_instance(herd=primary.herd, upstream=primary)
        make_dr_candidate(replica)
        replica.herd = make_herd(environment=primary.herd.environment)
        replica.upstream = None
        assert "withdraw" in " ".join(errors_of(replica)["herd"])

    def test_it_keeps_the_herd_protected_while_instances_exist(self):
        instance = make_instance()
        with pytest.raises(Exception, match="protected"):
            Herd.objects.filter(pk=instance.herd_id).delete()
