"""Environment, herd and DR pair admin: list costs, split-brain warnings, DR acknowledgement."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from herds.models import DRCandidate, Environment
from instances.models import Role
from tests.factories import make_dr_candidate, make_environment, make_herd, make_instance

pytestmark = pytest.mark.django_db

HERDS_URL = reverse("admin:herds_herd_changelist")
DR_PAIRS_URL = reverse("admin:herds_drpair_changelist")
ENVIRONMENTS_URL = reverse("admin:herds_environment_changelist")


def grow_herds(environment: Environment, count: int) -> None:
    """Herds of a primary, two replicas and a DR candidate each."""
    for _ in range(count):
        herd = make_herd(environment=environment)
        primary = make_instance(herd=herd, role=Role.PRIMARY, online=True)
        make_instance(herd=herd, upstream=primary, online=True, lag_bytes=0)
        make_dr_candidate(make_instance(herd=herd, upstream=primary, online=False))


def queries_for(client, url: str) -> int:
    client.get(url)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


@pytest.mark.parametrize("url", [HERDS_URL, DR_PAIRS_URL, ENVIRONMENTS_URL])
def test_it_costs_the_same_queries_for_10_and_200_herds(admin_client, url):
    environment = make_environment()
    grow_herds(environment, 10)
    small = queries_for(admin_client, url)
    grow_herds(environment, 190)
    for _ in range(9):
        make_environment()
    assert queries_for(admin_client, url) == small


class TestHerdList:
    def test_it_shows_primary_and_replica_count(self, admin_client):
        herd = make_herd(name="billing", vhost="billing.example.test")
        primary = make_instance(herd=herd, role=Role.PRIMARY, online=True)
        make_instance(herd=herd, upstream=primary)
        page = admin_client.get(HERDS_URL).content.decode()
        assert "billing.example.test" in page and primary.address in page
        assert '<td class="field-replica_count_column">1</td>' in page

    def test_it_flags_split_brain_in_red(self, admin_client):
        herd = make_herd(name="billing")
        make_instance(herd=herd, role=Role.PRIMARY, online=True)
        make_instance(herd=herd, role=Role.PRIMARY, online=True)
        page = admin_client.get(HERDS_URL).content.decode()
        assert '<strong style="color: #ba2121">SPLIT-BRAIN: 2 online primaries</strong>' in page

    def test_it_does_not_flag_a_healthy_herd(self, admin_client):
        make_instance(role=Role.PRIMARY, online=True)
        assert "SPLIT-BRAIN" not in admin_client.get(HERDS_URL).content.decode()


class TestHerdChangePage:
    def test_it_warns_about_split_brain_naming_both_primaries(self, admin_client):
        herd = make_herd()
        first = make_instance(herd=herd, role=Role.PRIMARY, online=True)
        second = make_instance(herd=herd, role=Role.PRIMARY, online=True)
        url = reverse("admin:herds_herd_change", args=[herd.pk])
        page = admin_client.get(url).content.decode()
        assert 'id="split-brain-warning"' in page
        assert first.address in page and second.address in page

    def test_it_has_no_warning_for_a_healthy_herd(self, admin_client):
        herd = make_instance(role=Role.PRIMARY, online=True).herd
        page = admin_client.get(reverse("admin:herds_herd_change", args=[herd.pk])).content
        assert b"split-brain-warning" not in page

    def test_it_records_who_acknowledged_a_dr_candidate(self, admin_client, admin_user):
        herd = make_herd(name="billing", pg_version=15)
        primary = make_instance(herd=herd, role=Role.PRIMARY)
        replica = make_instance(herd=herd, upstream=primary)
        url = reverse("admin:herds_herd_change", args=[herd.pk])
        data = {
            "name": "billing",
            "environment": herd.environment_id,
            "description": "",
            "owner": "",
            "pg_version": 15,
            "port": 5432,
            "data_root": "/var/lib/postgresql",
            "vhost": "",
            "ro_vhost": "",
            "instances-TOTAL_FORMS": 2,
            "instances-INITIAL_FORMS": 2,
            "instances-0-id": primary.pk,
            "instances-0-herd": herd.pk,
            "instances-1-id": replica.pk,
            "instances-1-herd": herd.pk,
            "dr_candidates-TOTAL_FORMS": 1,
            "dr_candidates-INITIAL_FORMS": 0,
            "dr_candidates-0-instance": replica.pk,
            "dr_candidates-0-priority": 1,
            "dr_candidates-0-note": "same rack as the primary's DR site",
        }
        response = admin_client.post(url, data)
        assert response.status_code == 302, response.context["errors"]
        candidate = DRCandidate.objects.get()
        assert (candidate.instance, candidate.acknowledged_by) == (replica, admin_user)

    def test_it_offers_only_the_herds_replicas_as_candidates(self, admin_client):
        herd = make_herd()
        primary = make_instance(herd=herd, role=Role.PRIMARY)
        replica = make_instance(herd=herd, upstream=primary)
        stranger = make_instance()
        response = admin_client.get(reverse("admin:herds_herd_change", args=[herd.pk]))
        formset = response.context["inline_admin_formsets"][1].formset
        choices = set(formset.empty_form.fields["instance"].queryset)
        assert choices == {replica} and stranger not in choices


class TestDRPairs:
    def test_it_lists_herds_with_a_primary_and_replicas(self, admin_client):
        pair = make_herd(name="billing")
        primary = make_instance(herd=pair, role=Role.PRIMARY, online=True)
        replica = make_instance(herd=pair, upstream=primary, online=True, lag_bytes=2048)
        candidate = make_instance(herd=pair, upstream=primary, online=False)
        make_dr_candidate(candidate, priority=1)
        make_instance(herd=make_herd(name="lonely"), role=Role.PRIMARY)
        page = admin_client.get(DR_PAIRS_URL).content.decode()
        assert "billing" in page and "lonely" not in page
        assert primary.address in page and replica.address in page
        assert "2.0 kB" in page
        assert f"1. {candidate.address}" in page

    def test_it_flags_pairs_without_acknowledged_candidates(self, admin_client):
        primary = make_instance(role=Role.PRIMARY)
        make_instance(herd=primary.herd, upstream=primary)
        assert "none acknowledged" in admin_client.get(DR_PAIRS_URL).content.decode()

    def test_it_is_read_only(self, admin_client):
        page = admin_client.get(DR_PAIRS_URL).content.decode()
        assert reverse("admin:herds_drpair_add") not in page


class TestDrills:
    def test_it_says_when_a_loss_is_only_a_lower_bound(self, admin_client):
        from django.utils import timezone

        from herds.models import Drill
        from instances.models import Job, JobKind, JobState

        herd = make_herd("shop")
        now = timezone.now()
        for lost, exact in ((3 * 1024 * 1024, False), (0, True)):
            job = Job.objects.create(kind=JobKind.FAILOVER, herd=herd, state=JobState.SUCCEEDED)
            Drill.objects.create(
                job=job,
                herd=herd,
                kind=JobKind.FAILOVER,
                started_at=now,
                writable_at=now,
                data_lost_bytes=lost,
                data_lost_exact=exact,
            )
        page = admin_client.get("/admin/herds/drill/").content.decode()
        assert "at least 3.0 MB (true loss unknown)" in page
        assert '<td class="field-data_lost">0 bytes</td>' in page
