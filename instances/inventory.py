"""What the inventory says about a herd's members: reads of the metadata database only.

The confirmation pages and the jobs ask the same questions here (who is the recorded
primary, which upstream a replica copies from), so a page never names an upstream the
job will not use. No SSH, no probes, no DNS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from instances.choices import Role
from instances.models import Instance


def herd_instances(herd_id: int) -> list[Instance]:
    return list(
        Instance.objects.select_related(
            "server__environment", "herd__environment", "dr_candidacy", "upstream__server"
        )
        .filter(herd_id=herd_id)
        .order_by("pk")
    )


def instances_by_herd(herd_ids: Iterable[int]) -> dict[int, list[Instance]]:
    """Every member of several herds in one query (confirmation pages)."""
    found: dict[int, list[Instance]] = {}
    for instance in (
        Instance.objects.select_related("server", "herd", "upstream__server")
        .filter(herd_id__in=set(herd_ids))
        .order_by("pk")
    ):
        found.setdefault(instance.herd_id, []).append(instance)
    return found


def recorded_primary(members: Sequence[Instance]) -> Instance | None:
    """The herd's primary as recorded: not fenced; an online one before one that is not."""
    primaries = [i for i in members if i.role == Role.PRIMARY and not i.fenced]
    primaries.sort(key=lambda i: (i.online is not True, i.pk))
    return primaries[0] if primaries else None


def choose_upstream(instance: Instance, members: Sequence[Instance]) -> Instance | None:
    """Where a rebuild or a new replica copies from: its recorded upstream (not itself,
    not fenced), else the herd's recorded primary (not itself). None: nowhere."""
    by_pk = {m.pk: m for m in members}
    if instance.upstream_id and instance.upstream_id != instance.pk:
        upstream = by_pk.get(instance.upstream_id)
        if upstream is not None and not upstream.fenced:
            return upstream
    return recorded_primary([m for m in members if m.pk != instance.pk])
