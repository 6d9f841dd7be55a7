"""`/healthz` for load balancers: no login, JSON, 200 when the metadata database and the
broker answer, 503 naming the one that does not.

Against the lab's real PostgreSQL and Redis (the test broker database); "down" is a real
refused connection: a port held bound, never listening, by the test itself.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client, override_settings

pytestmark = [pytest.mark.lab]

URL = "/healthz"


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A local port that refuses connections: bound by this test (so nothing else can
    listen there meanwhile) but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.django_db
def test_it_answers_200_without_a_login(lab) -> None:
    response = Client().get(URL)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    # A load balancer must never be answered from a cache.
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_it_answers_503_when_the_broker_is_down(lab, refused_port) -> None:
    with override_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{refused_port}/0"):
        response = Client().get(URL)
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "broker": "unreachable"}


@pytest.mark.django_db(transaction=True)
def test_it_answers_503_when_the_database_is_down(lab, refused_port) -> None:
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = refused_port
    try:
        response = Client().get(URL)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable", "broker": "ok"}


def test_it_refuses_a_post(lab) -> None:
    assert Client().post(URL).status_code == 405
