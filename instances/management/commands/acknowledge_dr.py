"""`manage.py acknowledge_dr HERD HOSTNAME [--priority N] [--note TEXT]`

Acknowledges the herd's replica on HOSTNAME as a DR candidate (what the DR pairs page and
the failover planner read), as a DBA does in the admin; running it again updates it."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from herds.models import DRCandidate
from instances.audit import changes_between, describe_changes, record_cli
from instances.choices import AuditVerb, Role
from instances.models import Instance


class Command(BaseCommand):
    help = "Acknowledge a herd's replica on a server as its DR candidate."

    def add_arguments(self, parser) -> None:
        parser.add_argument("herd")
        parser.add_argument("hostname")
        parser.add_argument("--priority", type=int, default=1)
        parser.add_argument("--note", default="")

    def handle(self, herd: str, hostname: str, priority: int, note: str, **_options) -> None:
        found = list(
            Instance.objects.select_related("herd", "server").filter(
                herd__name=herd, server__hostname=hostname
            )
        )
        if len(found) != 1:
            raise CommandError(
                f"{len(found)} instances of herd {herd!r} on {hostname!r} in the inventory; "
                "run discover first"
            )
        instance = found[0]
        if instance.role != Role.REPLICA:
            raise CommandError(f"{instance.label} is recorded as {instance.role}, not a replica")
        before = DRCandidate.objects.filter(instance=instance).first()
        candidate = DRCandidate.objects.filter(instance=instance).first() or DRCandidate(
            herd=instance.herd, instance=instance
        )
        candidate.priority, candidate.note = priority, note
        candidate.acknowledged_at = timezone.now()
        try:
            candidate.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        candidate.save()
        changes = changes_between(before, candidate, ["instance", "priority", "note"])
        record_cli(
            AuditVerb.CHANGED if before else AuditVerb.ADDED,
            f"DR candidate {instance.label} acknowledged (priority {priority}) by "
            f"(management command){': ' + describe_changes(changes) if changes else ''}",
            obj=candidate,
            changes=changes,
        )
        self.stdout.write(f"{instance.label} acknowledged as a DR candidate of {herd}")
