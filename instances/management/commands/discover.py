"""`manage.py discover [HOST ...]`: find the PostgreSQL clusters on servers.

For cron and configuration management (it replaces the original's pgutil_report agent).
Each server gets a discovery job, recorded like one queued from the admin; by default the
jobs run here, in parallel, and the command exits 1 if any failed. `--queue` hands them to
the Celery workers instead and returns at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from instances.jobs import queue as job_queue
from instances.jobs import runner
from instances.models import JobKind, JobOrigin, JobState, Server


def _run_one(job_id: int, task_id: str) -> None:
    try:
        runner.execute(job_id, task_id=task_id)
    finally:
        connection.close()


class Command(BaseCommand):
    help = "Discover PostgreSQL instances on servers (all servers when none are named)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("hostnames", nargs="*", metavar="HOST")
        parser.add_argument(
            "--queue",
            action="store_true",
            help="queue the jobs for the workers instead of running them here",
        )
        parser.add_argument("--parallel", type=int, default=8)

    def handle(self, hostnames: list[str], queue: bool, parallel: int, **_options) -> None:
        servers = list(Server.objects.select_related("environment").order_by("hostname"))
        if hostnames:
            known = {s.hostname: s for s in servers}
            unknown = [h for h in hostnames if h not in known]
            if unknown:
                raise CommandError(
                    "not in the inventory: "
                    + ", ".join(unknown)
                    + " (add them first: manage.py add_server)"
                )
            servers = [known[h] for h in hostnames]
        if not servers:
            raise CommandError("no servers in the inventory")
        created = job_queue.create_jobs(
            JobKind.DISCOVER, servers, origin=JobOrigin.CLI, queue=queue
        )
        if queue:
            self.stdout.write(f"queued {len(created)} discovery job(s), batch {created[0].batch}")
            return
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(lambda j: _run_one(j.pk, j.task_id), created))
        failed = 0
        for job in created:
            job.refresh_from_db()
            if job.state == JobState.SUCCEEDED:
                self.stdout.write(job.summary)
            else:
                failed += 1
                self.stderr.write(f"{job.target_label}: {job.state}: {job.error}")
        if failed:
            raise CommandError(f"{failed} of {len(created)} discovery job(s) failed")
