"""`/healthz`: may a load balancer send people to this controller?

It answers without a login, in JSON, 200 when the metadata database and the broker both
answer and 503 otherwise, naming which one does not. The reasons (which carry host names
and ports) go to the log, not to an anonymous client.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from kombu import Connection

log = logging.getLogger("elephaas.healthz")

# Seconds the broker gets to accept a connection: a load balancer's check usually gives up
# after a few seconds, and a broker slower than this is as good as down for new jobs. The
# database is bounded by ELEPHAAS_DB_CONNECT_TIMEOUT already.
BROKER_TIMEOUT = 2.0

OK = "ok"
UNREACHABLE = "unreachable"


def database_reachable() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        log.warning("healthz: metadata database: %s: %s", type(exc).__name__, exc)
        # A broken persistent connection must not be handed to the next request.
        connection.close()
        return False
    return True


def broker_reachable() -> bool:
    broker = Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=BROKER_TIMEOUT,
        transport_options={
            "socket_connect_timeout": BROKER_TIMEOUT,
            "socket_timeout": BROKER_TIMEOUT,
        },
    )
    try:
        # One attempt, no retry: the check must answer within the balancer's timeout.
        broker.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    except Exception as exc:  # noqa: BLE001 - kombu and redis raise many kinds
        log.warning("healthz: broker: %s: %s", type(exc).__name__, exc)
        return False
    finally:
        broker.release()
    return True


@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": OK if database_reachable() else UNREACHABLE,
        "broker": OK if broker_reachable() else UNREACHABLE,
    }
    healthy = all(value == OK for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **checks},
        status=200 if healthy else 503,
    )
