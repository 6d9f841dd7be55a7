"""`manage.py migrate_locked`: `migrate`, one controller at a time.

The Debian units run it before the web and the worker start (ExecStartPre). Several
controllers share one metadata database, and after an upgrade they may all start at once:
two `migrate` runs side by side can both try to apply the same migration (the loser fails
on a duplicate table, or worse, half-applies a data migration). A session advisory lock
makes the second wait; when it gets the lock the first has finished and it has nothing left
to apply. Postgres drops the lock if the holder dies, so a killed start never blocks the
next one.
"""

from __future__ import annotations

import time

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection

# (class, key) of the advisory lock; classes 1-3 are jobs' (jobs.LOCK_CLASS), 4 the
# health sweep's (health.SWEEP_LOCK).
MIGRATE_LOCK = (5, 1)


class Command(BaseCommand):
    help = "Apply migrations under an advisory lock: controllers starting together take turns."

    def handle(self, *args, **options) -> None:
        verbosity = options["verbosity"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", MIGRATE_LOCK)
            if not cursor.fetchone()[0]:
                self.stdout.write("another controller is migrating: waiting for it to finish")
                started = time.monotonic()
                # Blocks until the holder commits and unlocks (or its session ends); the
                # unit's TimeoutStartSec bounds the wait.
                cursor.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATE_LOCK)
                self.stdout.write(f"lock taken after {time.monotonic() - started:.1f} s")
        try:
            call_command("migrate", interactive=False, verbosity=verbosity)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATE_LOCK)
