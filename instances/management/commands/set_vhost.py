"""`manage.py set_vhost HERD VHOST [--ro-vhost NAME] [--environment ENV]`

Sets a herd's DNS names and applies them at once with a Refresh DNS job run here."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from herds.models import Herd
from instances.audit import changes_between, describe_changes, record_cli
from instances.choices import AuditVerb
from instances.jobs import queue as job_queue
from instances.jobs import runner
from instances.models import JobKind, JobOrigin, JobState


class Command(BaseCommand):
    help = "Set a herd's vhost (and read-only vhost) and point them at its instances."

    def add_arguments(self, parser) -> None:
        parser.add_argument("herd")
        parser.add_argument("vhost")
        parser.add_argument("--ro-vhost", default="")
        parser.add_argument("--environment", default=None)

    def handle(self, herd: str, vhost: str, ro_vhost: str, environment, **_options) -> None:
        herds = Herd.objects.filter(name=herd)
        if environment:
            herds = herds.filter(environment__name=environment)
        found = list(herds)
        if len(found) != 1:
            raise CommandError(f"{len(found)} herds named {herd!r}; name the --environment")
        target = found[0]
        before = Herd.objects.get(pk=target.pk)
        target.vhost, target.ro_vhost = vhost, ro_vhost
        try:
            target.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        target.save()
        changes = changes_between(before, target, ["vhost", "ro_vhost"])
        if changes:
            record_cli(
                AuditVerb.CHANGED,
                f"herd {target.name} changed by (management command): " + describe_changes(changes),
                obj=target,
                changes=changes,
            )
        [job] = runner.run_inline(
            job_queue.create_jobs(JobKind.REFRESH_DNS, [target], origin=JobOrigin.CLI, queue=False)
        )
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"{herd}: DNS not updated: {job.error}")
        self.stdout.write(job.summary)
