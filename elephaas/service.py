"""How ElepHaaS's long-running Celery processes are started: the worker and beat.

One argv builder serves the lab (lab/fleet.py), the test workers (tests/conftest.py) and the
Debian units (`python -m elephaas.service worker|beat`), so that a controller runs its
worker with exactly the pool and flags the tests ran.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

# Celery's log levels; Django's LOGGING accepts the same names.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def worker_argv(
    hostname: str,
    concurrency: int,
    queues: str | None = None,
    *,
    python: str = sys.executable,
    loglevel: str = "INFO",
) -> list[str]:
    """A Celery worker as ElepHaaS runs it: threads (SSH work waits on I/O), no gossip or
    mingle (workers share nothing but the broker and the jobs table, whose claim keeps a
    job to one worker)."""
    argv = [
        python,
        "-m",
        "celery",
        "-A",
        "elephaas",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--hostname",
        hostname,
        "--without-gossip",
        "--without-mingle",
    ]
    return argv + (["--queues", queues] if queues else [])


def beat_argv(schedule: str, *, python: str = sys.executable, loglevel: str = "INFO") -> list[str]:
    """Celery beat: the periodic health sweep, lost-job reaper, outbox sweep and campaign
    advance (settings.CELERY_BEAT_SCHEDULE). `schedule` is its state file."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        "elephaas",
        "beat",
        "--loglevel",
        loglevel,
        "--schedule",
        schedule,
    ]


def _loglevel(level: str) -> str:
    level = level.upper()
    return level if level in LOG_LEVELS else "INFO"


def main(argv: list[str] | None = None) -> NoReturn:
    """Replace this process with the worker or beat (the unit's main pid stays the same,
    so systemd's stop and restart reach Celery itself)."""
    parser = argparse.ArgumentParser(prog="python -m elephaas.service")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="the Celery worker (threads pool)")
    worker.add_argument(
        "--hostname",
        default="elephaas@%h",
        help="Celery node name; %%h is the host name (default elephaas@%%h)",
    )
    beat = sub.add_parser("beat", help="Celery beat")
    beat.add_argument("--schedule", required=True, help="beat's state file")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")
    from django.conf import settings

    # Read through Django's settings so that local_settings.py overrides count too.
    loglevel = _loglevel(str(settings.LOGGING["root"]["level"]))
    if args.command == "worker":
        command = worker_argv(args.hostname, settings.WORKER_CONCURRENCY, loglevel=loglevel)
    else:
        command = beat_argv(args.schedule, loglevel=loglevel)
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
