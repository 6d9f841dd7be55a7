"""Gathering each instance's non-default settings from pg_settings, at a low rate.

`gather_due` (the `instances.gather_settings` beat task, every SETTINGS_GATHER_EVERY
seconds) reads at most SETTINGS_BATCH online instances whose settings were last read more
than SETTINGS_INTERVAL seconds ago (never read first), so a fleet of any size costs a
bounded number of probes a minute. A job that changes a setting gathers its instance at
once; one that sees an instance's pending restarts change marks it due.

`gather`:
1. probe the instances concurrently (one query each, bounded by PG_PROBE_CONNECT_TIMEOUT);
2. read what is stored for those that answered (one query);
3. write only what changed (one upsert, one delete) and stamp `settings_seen_at` (one
   UPDATE); an instance that did not answer keeps its rows as they were: never invented.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from instances import probe
from instances.models import Instance, InstanceSetting
from instances.settings_drift import Seen, changes, parse_rows

log = logging.getLogger("elephaas.settings")


@dataclass
class GatherSummary:
    instances: int = 0
    answered: int = 0
    written: int = 0
    deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(instance: Instance) -> dict[str, Seen] | None:
    timeout = float(settings.PG_PROBE_CONNECT_TIMEOUT)
    try:
        rows = probe.non_default_settings(instance.server.hostname, instance.port, timeout)
    except probe.ProbeError as exc:
        log.info("settings of %s not gathered: %s", instance.pk, exc)
        return None
    return parse_rows(rows)


def gather(instances: list[Instance]) -> GatherSummary:
    """Read and record the non-default settings of these instances (see the module)."""
    summary = GatherSummary(instances=len(instances))
    if not instances:
        return summary
    workers = max(1, min(settings.HEALTH_CONCURRENCY, len(instances)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="settings") as pool:
        seen = dict(zip([i.pk for i in instances], pool.map(_read, instances), strict=True))
    answered = {pk: rows for pk, rows in seen.items() if rows is not None}
    summary.answered = len(answered)
    if not answered:
        return summary
    stored: dict[int, dict[str, Seen]] = {pk: {} for pk in answered}
    for row in InstanceSetting.objects.filter(instance_id__in=answered).values(
        "instance_id", "name", "setting", "unit", "source", "pending_restart", "shown"
    ):
        pk = row.pop("instance_id")
        stored[pk][row["name"]] = Seen(**row)
    now = timezone.now()
    # A new value gets a new `since`; a row whose value is the same but whose pending
    # flag or source moved keeps it: `since` says since when it has this value.
    new_value: list[InstanceSetting] = []
    same_value: list[InstanceSetting] = []
    gone = Q()
    for pk, rows in answered.items():
        changed, removed = changes(stored[pk], rows)
        for seen in changed:
            row = InstanceSetting(instance_id=pk, since=now, **asdict(seen))
            before = stored[pk].get(seen.name)
            (same_value if before and before.key == seen.key else new_value).append(row)
        if removed:
            gone |= Q(instance_id=pk, name__in=removed)
    fields = ["setting", "unit", "source", "pending_restart", "shown"]
    with transaction.atomic():
        for rows, update in ((new_value, [*fields, "since"]), (same_value, fields)):
            if rows:
                InstanceSetting.objects.bulk_create(
                    rows,
                    update_conflicts=True,
                    unique_fields=["instance", "name"],
                    update_fields=update,
                )
        if gone:
            summary.deleted = InstanceSetting.objects.filter(gone).delete()[0]
        # The instance list's "restart pending" column follows what was just seen: one
        # UPDATE per distinct list (nearly always one: none pending).
        by_pending: dict[str, list[int]] = {}
        for pk, rows in answered.items():
            pending = ",".join(sorted(n for n, seen in rows.items() if seen.pending_restart))
            by_pending.setdefault(pending[:500], []).append(pk)
        for pending, pks in by_pending.items():
            Instance.objects.filter(pk__in=pks).update(
                settings_seen_at=now, pending_restart=pending
            )
    write = new_value + same_value
    summary.written = len(write)
    return summary


def due(limit: int | None = None) -> list[Instance]:
    """Online instances whose settings are oldest, never read first, at most `limit`."""
    since = timezone.now() - timedelta(seconds=settings.SETTINGS_INTERVAL)
    return list(
        Instance.objects.select_related("server")
        .filter(online=True)
        .filter(Q(settings_seen_at__isnull=True) | Q(settings_seen_at__lt=since))
        .order_by(F("settings_seen_at").asc(nulls_first=True), "pk")[
            : limit or settings.SETTINGS_BATCH
        ]
    )


def gather_due() -> GatherSummary:
    summary = gather(due())
    if summary.instances:
        log.info(
            "settings gathered: %d of %d instances answered, %d rows written, %d deleted",
            summary.answered,
            summary.instances,
            summary.written,
            summary.deleted,
        )
    return summary
