"""Settings for the test run: the lab's services, a separate broker database.

The test worker (tests/conftest.py) is started with these settings too, pointed at the
test database that pytest-django creates, so a task enqueued by a test is executed by a
real worker against the same rows the test sees. Broker database 15 keeps test tasks away
from the demo's worker.
"""

import os
import sys

from elephaas.settings import *  # noqa: F403
from elephaas.settings import DATABASES

CELERY_BROKER_URL = os.environ.get("ELEPHAAS_TEST_BROKER_URL", "redis://127.0.0.1:6390/15")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
# Two test runs at once (two engineers on one lab) need their own database and broker db:
# ELEPHAAS_TEST_DB_NAME=test_mine ELEPHAAS_TEST_BROKER_URL=redis://127.0.0.1:6390/12.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("ELEPHAAS_TEST_DB_NAME", "test_elephaas")}
DATABASES["default"]["CONN_MAX_AGE"] = 0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Short waits so that lock conflicts, cancels and lost workers show up in seconds; the
# test worker runs with these settings too.
JOB_LOCK_WAIT = 3.0
JOB_HEARTBEAT = 0.5
JOB_LOST_AFTER = 10.0

# The fencing hook of the lab's "prod" environment (the drill tests): it records what it
# was asked to fence in the lab's log folder (tests/fence_hook.py), as an IPMI or cloud
# power-off would be asked.
FENCE_COMMANDS = {"prod": [sys.executable, "-m", "tests.fence_hook", "{hostname}", "{herd}"]}
