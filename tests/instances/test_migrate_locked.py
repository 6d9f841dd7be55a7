"""`manage.py migrate_locked`: a second controller's migrate waits for the first's.

The test holds the advisory lock, as a controller in the middle of its migrations would,
and starts the command as a unit's ExecStartPre does, in a process of its own against the
same (test) database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from instances.management.commands.migrate_locked import MIGRATE_LOCK

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]


def start_migrate() -> subprocess.Popen:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        ELEPHAAS_DB_NAME=connection.settings_dict["NAME"],
        PYTHONUNBUFFERED="1",
    )
    return subprocess.Popen(
        [sys.executable, "manage.py", "migrate_locked"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_it_waits_for_the_controller_that_holds_the_lock(lab) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATE_LOCK)
    other = start_migrate()
    try:
        first_line = other.stdout.readline()
        assert "another controller is migrating" in first_line
        time.sleep(1)
        assert other.poll() is None, "migrate ran while another controller held the lock"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATE_LOCK)
    rest, _ = other.communicate(timeout=120)
    assert other.returncode == 0, rest
    assert "lock taken after" in rest
    assert "No migrations to apply" in rest


def test_it_releases_the_lock_when_done(lab) -> None:
    done = start_migrate()
    output, _ = done.communicate(timeout=120)
    assert done.returncode == 0, output
    assert "another controller" not in output
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", MIGRATE_LOCK)
        assert cursor.fetchone()[0] is True
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATE_LOCK)
