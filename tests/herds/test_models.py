"""Environment, Herd, DR candidates: validation, derived values, split-brain."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from herds.models import DRCandidate, Environment, Herd
from instances.models import Role
from tests.factories import (
    make_dr_candidate,
    make_environment,
    make_herd,
    make_instance,
)

pytestmark = pytest.mark.django_db


def errors_of(obj) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        obj.full_clean()
    return info.value.message_dict


class TestEnvironment:
    @pytest.mark.parametrize("name", ["Prod", "dr site", "prod;", "$(id)", "pröd"])
    def test_it_rejects_names_that_are_not_slugs(self, name):
        assert "name" in errors_of(Environment(name=name))

    def test_it_accepts_slug_names(self):
        Environment(name="dr-site").full_clean()


class TestHerdValidation:
    def test_it_allows_the_same_name_in_two_environments(self):
        herd = make_herd(name="billing")
        make_herd(name="billing", environment=make_environment())
        other = Herd(name="billing", environment=make_environment(), pg_version=15)
        other.full_clean()
        assert herd.name == other.name

    def test_it_refuses_the_same_name_twice_in_one_environment(self):
        herd = make_herd(name="billing")
        again = Herd(name="billing", environment=herd.environment, pg_version=15)
        assert "already has a herd with this name" in " ".join(errors_of(again)["__all__"])

    @pytest.mark.parametrize(
        "name", ["bill ing", "bill;ing", "bill'ing", "$(reboot)", "bill`id`", "1billing", "b\n"]
    )
    def test_it_rejects_hostile_names(self, name):
        herd = Herd(name=name, environment=make_environment(), pg_version=15)
        assert "name" in errors_of(herd)

    @pytest.mark.parametrize("root", ["/var/lib/pg;rm -rf /", "relative", "/a/../b", "/a$HOME"])
    def test_it_rejects_unsafe_data_roots(self, root):
        herd = Herd(name="billing", environment=make_environment(), pg_version=15, data_root=root)
        assert "data_root" in errors_of(herd)

    @pytest.mark.parametrize("port", [0, 65536])
    def test_it_rejects_ports_out_of_range(self, port):
        herd = Herd(name="billing", environment=make_environment(), pg_version=15, port=port)
        assert "port" in errors_of(herd)

    def test_it_uses_standard_defaults(self):
        herd = make_herd(name="billing")
        assert (herd.port, herd.data_root) == (5432, "/var/lib/postgresql")

    def test_it_fixes_the_cluster_name_at_creation(self):
        herd = make_herd(name="billing")
        herd.name = "invoicing"
        herd.save()
        herd.refresh_from_db()
        assert herd.cluster_name == "billing"

    def test_it_rejects_an_ip_address_as_vhost(self):
        herd = Herd(name="billing", environment=make_environment(), pg_version=15, vhost="10.0.0.1")
        assert "IP address" in " ".join(errors_of(herd)["vhost"])

    def test_it_refuses_a_vhost_used_by_another_herd(self):
        make_herd(vhost="billing.example.test")
        herd = Herd(
            name="other",
            environment=make_environment(),
            pg_version=15,
            vhost="billing.example.test",
        )
        assert "Another herd already uses this vhost." in " ".join(errors_of(herd)["__all__"])

    def test_it_refuses_a_vhost_that_is_another_herds_read_only_vhost(self):
        make_herd(vhost="billing.example.test", ro_vhost="billing-ro.example.test")
        herd = Herd(
            name="other",
            environment=make_environment(),
            pg_version=15,
            vhost="BILLING-RO.example.test",
        )
        assert "read-only vhost" in " ".join(errors_of(herd)["vhost"])

    def test_it_refuses_the_same_name_for_both_vhosts(self):
        herd = Herd(
            name="billing",
            environment=make_environment(),
            pg_version=15,
            vhost="billing.example.test",
            ro_vhost="billing.example.test",
        )
        assert "ro_vhost" in errors_of(herd)

    @pytest.mark.parametrize("version", [9, 100])
    def test_it_rejects_unsupported_versions(self, version):
        herd = Herd(name="billing", environment=make_environment(), pg_version=version)
        assert "pg_version" in errors_of(herd)


class TestSplitBrain:
    def test_it_saves_and_flags_a_second_online_primary(self):
        herd = make_herd()
        make_instance(herd=herd, role=Role.PRIMARY, online=True)
        second = make_instance(herd=herd, role=Role.PRIMARY, online=True)
        second.full_clean()
        assert herd.split_brain
        assert herd.online_primaries == 2

    def test_it_flags_it_in_the_annotated_queryset(self):
        herd = make_herd()
        make_instance(herd=herd, role=Role.PRIMARY, online=True)
        make_instance(herd=herd, role=Role.PRIMARY, online=True)
        calm = make_herd()
        make_instance(herd=calm, role=Role.PRIMARY, online=True)
        annotated = Herd.objects.with_summary().get(pk=herd.pk)
        assert annotated.online_primary_count == 2 and annotated.split_brain
        assert list(Herd.objects.split_brain()) == [herd]

    @pytest.mark.parametrize("other_online", [False, None])
    def test_it_does_not_flag_an_old_primary_that_is_down_or_unknown(self, other_online):
        herd = make_herd()
        make_instance(herd=herd, role=Role.PRIMARY, online=True)
        make_instance(herd=herd, role=Role.PRIMARY, online=other_online, fenced=True)
        assert not herd.split_brain
        assert not Herd.objects.with_summary().get(pk=herd.pk).split_brain


class TestSummary:
    def test_it_annotates_primary_and_replica_count(self):
        herd = make_herd()
        make_instance(herd=herd, role=Role.PRIMARY, online=False, port=5432)
        live = make_instance(herd=herd, role=Role.PRIMARY, online=True, port=5433)
        make_instance(herd=herd, role=Role.REPLICA)
        make_instance(herd=herd, role=Role.REPLICA)
        make_instance(herd=herd, role=Role.UNKNOWN)
        annotated = Herd.objects.with_summary().get(pk=herd.pk)
        # The online one is the primary clients reach.
        assert annotated.primary_address == live.address
        assert annotated.replica_count == 2
        assert herd.primary == live

    def test_it_annotates_a_herd_without_instances(self):
        annotated = Herd.objects.with_summary().get(pk=make_herd().pk)
        assert (annotated.primary_address, annotated.replica_count) == (None, 0)

    def test_it_lists_only_herds_with_a_primary_and_a_replica_as_dr_pairs(self):
        pair, lonely_primary, orphans = make_herd(), make_herd(), make_herd()
        primary = make_instance(herd=pair, role=Role.PRIMARY)
        make_instance(herd=pair, upstream=primary)
        make_instance(herd=lonely_primary, role=Role.PRIMARY)
        make_instance(herd=orphans, role=Role.REPLICA)
        assert list(Herd.objects.dr_pairs()) == [pair]


class TestDRCandidate:
    def test_it_accepts_a_replica_of_the_herd(self):
        primary = make_instance(role=Role.PRIMARY)
        replica = make_instance(herd=primary.herd, upstream=primary)
        DRCandidate(herd=primary.herd, instance=replica, priority=1).full_clean()

    def test_it_refuses_a_replica_of_another_herd(self):
        replica = make_instance()
        candidate = DRCandidate(herd=make_herd(), instance=replica)
        assert "belongs to herd" in " ".join(errors_of(candidate)["instance"])

    @pytest.mark.parametrize("role", [Role.PRIMARY, Role.UNKNOWN])
    def test_it_refuses_an_instance_that_is_not_a_replica(self, role):
        instance = make_instance(role=role)
        candidate = DRCandidate(herd=instance.herd, instance=instance)
        assert "only replicas" in " ".join(errors_of(candidate)["instance"])

    def test_it_refuses_a_second_acknowledgement_of_one_instance(self):
        replica = make_instance()
        make_dr_candidate(replica)
        with pytest.raises(IntegrityError), transaction.atomic():
            make_dr_candidate(replica, priority=2)

    def test_it_orders_candidates_by_priority(self):
        primary = make_instance(role=Role.PRIMARY)
        second = make_dr_candidate(make_instance(herd=primary.herd), priority=2)
        first = make_dr_candidate(make_instance(herd=primary.herd), priority=1)
        assert list(primary.herd.dr_candidates.all()) == [first, second]
