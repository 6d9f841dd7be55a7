"""The pages DBAs keep open fit a 1366×768 laptop screen: the dashboard, and the instance
list without scrolling sideways, with names and flags as long as a real fleet's."""

from __future__ import annotations

import pytest
from django.utils import timezone

from instances.choices import Role
from tests.factories import make_environment, make_herd, make_instance, make_server

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fleet_rows():
    """Three herds as a real fleet names them, every column and flag filled in: rows only,
    nothing listens on these hosts."""
    now = timezone.now()
    env = make_environment("production-eu-west")
    for number, name in enumerate(("customer-orders", "billing-ledger", "reporting-dwh"), 1):
        herd = make_herd(name, environment=env, port=5432 + number, vhost=f"{name}-rw")
        primary = make_instance(
            herd=herd,
            server=make_server(f"pg-{name}-01.db.eu-west-1.example.com", environment=env),
            role=Role.PRIMARY,
            online=True,
            pg_version=16,
            last_lsn="3A/9F000000",
            last_checked=now,
            state_changed_at=now,
        )
        for replica in (2, 3):
            make_instance(
                herd=herd,
                server=make_server(
                    f"pg-{name}-0{replica}.db.eu-west-1.example.com", environment=env
                ),
                upstream=primary,
                online=replica == 2,
                pg_version=16,
                lag_bytes=123_456_789,
                lag_seconds=42.5,
                last_checked=now,
                pending_restart="max_connections, shared_buffers",
                needs_rebuild=replica == 3,
                rebuild_job=12345 if replica == 3 else None,
            )


def test_the_dashboard_fits_a_laptop_screen(page, fleet_rows):
    page.log_in("alice")

    dashboard = page.find("#fleet-dashboard")
    path = page.shot("dashboard 1366x768")

    assert dashboard.is_displayed()
    assert "fleet at a glance: 9 instances" in dashboard.text.lower()
    scroll_width, client_width = page.widths()
    assert scroll_width <= client_width, f"{scroll_width} > {client_width}: see {path}"
    # A page too narrow for the table does not scroll: it squeezes the row titles to a
    # letter per line and slides the table under "Recent actions". Neither happens.
    lines = page.driver.execute_script(
        "return [...document.querySelectorAll('#fleet-dashboard th')].map(th => {"
        " const r = document.createRange(); r.selectNodeContents(th);"
        " return [th.textContent.trim(), r.getClientRects().length]; })"
    )
    assert lines and all(count == 1 for _title, count in lines), f"{lines}: see {path}"
    right = page.driver.execute_script(
        "return document.getElementById('fleet-dashboard').getBoundingClientRect().right"
    )
    left = page.driver.execute_script(
        "return document.getElementById('content-related').getBoundingClientRect().left"
    )
    assert right <= left, f"the dashboard ({right}) runs under Recent actions ({left}): {path}"
    # The admin's own stylesheet is served (a page without it would fit trivially).
    colour = page.driver.execute_script(
        "return getComputedStyle(document.getElementById('header')).backgroundColor"
    )
    assert colour not in ("", "rgba(0, 0, 0, 0)")


def test_the_instance_list_needs_no_sideways_scrolling(page, fleet_rows):
    page.log_in("alice")
    page.open("/admin/instances/instance/")

    rows = page.find_all("#result_list tbody tr")
    path = page.shot("instance list 1366x768")

    assert len(rows) == 9
    assert "restart pending: max_connections, shared_buffers" in page.text("#result_list")
    scroll_width, client_width = page.widths()
    assert scroll_width <= client_width, f"page {scroll_width} > {client_width}: see {path}"
    # Nor does the table inside its own box, which scrolls rather than widen the page.
    table_width, box_width = page.widths("#changelist .results")
    assert table_width <= box_width, f"results {table_width} > {box_width}: see {path}"
