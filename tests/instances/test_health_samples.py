"""Health samples: what each sweep keeps for the dashboard's lag pictures, in one INSERT,
and what it prunes, in one DELETE."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from instances import health
from instances.models import HealthSample, Instance, Role
from tests.factories import make_herd, make_instance, make_server

# Nothing listens there: each probe is refused at once, a real sweep without the lab.
CLOSED_PORTS = 61001


def statements(captured, verb: str) -> list[str]:
    table = HealthSample._meta.db_table
    return [q["sql"] for q in captured if q["sql"].startswith(f"{verb} ") and table in q["sql"]]


def unreachable_fleet(count: int) -> list[Instance]:
    herd = make_herd()
    server = make_server(hostname="127.0.0.1", environment=herd.environment)
    first = make_instance(herd=herd, server=server, role=Role.PRIMARY, port=CLOSED_PORTS)
    others = [
        make_instance(herd=herd, server=server, upstream=first, port=CLOSED_PORTS + n)
        for n in range(1, count)
    ]
    return [first, *others]


@pytest.mark.django_db
@pytest.mark.parametrize("count", [3, 40])
def test_it_keeps_one_sample_per_instance_in_one_insert(count):
    instances = unreachable_fleet(count)
    with CaptureQueriesContext(connection) as captured:
        summary = health.sweep()
    assert summary.instances == count and summary.samples == count
    assert len(statements(captured, "INSERT")) == 1
    assert len(statements(captured, "DELETE")) == 1
    samples = list(HealthSample.objects.all())
    assert {s.instance_id for s in samples} == {i.pk for i in instances}
    # What the sweep saw: nothing answered, so nothing was measured.
    assert all(not s.online and s.lag_bytes is None and s.lag_seconds is None for s in samples)
    assert len({s.taken_at for s in samples}) == 1


@pytest.mark.django_db
def test_it_prunes_samples_older_than_the_retention(settings):
    settings.HEALTH_SAMPLE_RETENTION = 2
    [instance] = unreachable_fleet(1)
    now = timezone.now()
    old = HealthSample.objects.create(
        instance=instance, taken_at=now - timedelta(hours=3), online=True, lag_bytes=1
    )
    recent = HealthSample.objects.create(
        instance=instance, taken_at=now - timedelta(hours=1), online=True, lag_bytes=1
    )
    summary = health.sweep()
    assert summary.samples_pruned == 1
    kept = set(HealthSample.objects.values_list("pk", flat=True))
    assert old.pk not in kept and recent.pk in kept and len(kept) == 2
