"""The audit trail: `record` writes an event's row (instances.models.AuditEvent) and its
line on the `elephaas.audit` logger, from one message, so that the two never drift.

Where the row is written:

1. In the caller's transaction when there is one, inside a savepoint: the row commits
   exactly when the action does (a job queued and its row are one commit: no row for a
   job that was rolled back, no job without its row), and a failed write rolls back only
   its savepoint, so the action goes on.
2. Otherwise (a refusal, a login, a worker's end of a drill) in a transaction of its own,
   at once. Callers record outside any transaction an exception may still roll back: a
   refusal is recorded before it is raised, by code that runs outside `atomic`.

A row that cannot be written (the database gone, a bug) is logged with the reason, never
raised: the audit log line was written first and stays.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from instances.choices import AuditVerb
from instances.models import AuditEvent

audit = logging.getLogger("elephaas.audit")

# "From where" for what no request asked: a worker's own doing, a management command.
WORKER = "worker"
CLI = "cli"
# "Who" for a management command (the label jobs use for JobOrigin.CLI).
CLI_USER = "(management command)"

PRUNE_BATCH = 10_000
_VALUE_CHARS = 60


class ObjectRef(NamedTuple):
    """An object as the trail names it: "app_label.model_name", its key, its name."""

    type: str
    id: str = ""
    repr: str = ""


def ref(obj: models.Model | type[models.Model] | None) -> ObjectRef | None:
    """An object (or a model, for what concerns its whole list) as the trail names it;
    taken before a delete, which clears the object's key."""
    if obj is None:
        return None
    meta = obj._meta
    kind = f"{meta.app_label}.{meta.model_name}"
    if isinstance(obj, type):
        return ObjectRef(kind)
    return ObjectRef(kind, "" if obj.pk is None else str(obj.pk), str(obj)[:200])


def remote_addr(request: HttpRequest | None) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client wants it to be unless a
    # trusted proxy rewrites it, and an audit trail must not be forgeable.
    if request is None:
        return "-"
    return request.META.get("REMOTE_ADDR") or "-"


def username_of(user: Any) -> str:
    if user is None or not getattr(user, "is_authenticated", False):
        return "(anonymous)"
    return user.get_username()


def record(
    verb: AuditVerb,
    message: str,
    *,
    username: str,
    remote: str,
    obj: models.Model | type[models.Model] | ObjectRef | None = None,
    changes: dict[str, list] | None = None,
) -> AuditEvent | None:
    """Log `message` on `elephaas.audit` (refusals as warnings) and write its row; return
    the row, or None when it could not be written (said in the log)."""
    message = " ".join(message.split())
    level = logging.WARNING if verb in AuditVerb.refusals() else logging.INFO
    audit.log(level, "%s", message)
    target = obj if isinstance(obj, ObjectRef) or obj is None else ref(obj)
    try:
        with transaction.atomic():
            return AuditEvent.objects.create(
                verb=verb,
                username=(username or "-")[:150],
                remote=(remote or "-")[:64],
                object_type=target.type if target else "",
                object_id=target.id[:64] if target else "",
                object_repr=target.repr[:200] if target else "",
                message=_cut(message, 500),
                changes=changes or {},
            )
    except Exception as exc:  # noqa: BLE001 - the action must go on whatever failed here
        audit.error(
            "the audit row of this event was not written (%s: %s): %s",
            type(exc).__name__,
            str(exc).strip()[:200],
            message,
        )
        return None


def record_request(
    request: HttpRequest,
    verb: AuditVerb,
    message: str,
    *,
    obj: models.Model | type[models.Model] | ObjectRef | None = None,
    changes: dict[str, list] | None = None,
) -> AuditEvent | None:
    """`record` for what a request's user did, from the request's address."""
    return record(
        verb,
        message,
        username=username_of(getattr(request, "user", None)),
        remote=remote_addr(request),
        obj=obj,
        changes=changes,
    )


def record_cli(
    verb: AuditVerb,
    message: str,
    *,
    obj: models.Model | ObjectRef | None = None,
    changes: dict[str, list] | None = None,
) -> AuditEvent | None:
    """`record` for what a management command did (configuration management, the demo)."""
    return record(verb, message, username=CLI_USER, remote=CLI, obj=obj, changes=changes)


def shown(value: Any) -> str | None:
    """A field's value as the trail keeps it: text, cut short; None stays None."""
    if value is None:
        return None
    return _cut(str(value), _VALUE_CHARS)


def changes_between(
    before: models.Model | None, after: models.Model, fields: list[str]
) -> dict[str, list]:
    """{field: [old, new]} for the named model fields whose shown value differs
    (`before` None: an addition, every field set)."""
    found = {}
    for name in fields:
        old = shown(_value(before, name)) if before is not None else None
        new = shown(_value(after, name))
        if old != new:
            found[name] = [old, new]
    return found


def describe_changes(changes: dict[str, list]) -> str:
    """ "port: 5432 → 5433; notes: '' → 'moved'" for a message."""
    return "; ".join(
        f"{name}: {_quoted(old)} → {_quoted(new)}" for name, (old, new) in changes.items()
    )


def prune(now: datetime | None = None) -> int:
    """Delete the rows older than AUDIT_RETENTION_DAYS (0: keep them all), oldest first, a
    batch at a time so that no statement holds many row locks; returns how many. Cheap:
    the `at` index finds them, and beat runs it hourly, so each run finds about an hour's
    worth."""
    days = settings.AUDIT_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted = 0
    while True:
        batch = list(
            AuditEvent.objects.filter(at__lt=cutoff)
            .order_by("at")
            .values_list("pk", flat=True)[:PRUNE_BATCH]
        )
        if batch:
            deleted += AuditEvent.objects.filter(pk__in=batch).delete()[0]
        if len(batch) < PRUNE_BATCH:
            break
    if deleted:
        audit.info("pruned %d audit event(s) older than %d day(s)", deleted, days)
    return deleted


def _value(obj: models.Model, name: str) -> Any:
    field = obj._meta.get_field(name)
    if field.is_relation and field.many_to_one:
        # The related row's name, not its key: what a person reading the trail recognises.
        related_id = getattr(obj, field.attname)
        return None if related_id is None else getattr(obj, name)
    return getattr(obj, name)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quoted(value: str | None) -> str:
    return "none" if value is None else repr(value)
