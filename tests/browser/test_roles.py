"""Each role, logged in through the login page with its LDAP account, sees only what it
may do: the actions its menus offer, nothing more."""

from __future__ import annotations

import pytest
from selenium.webdriver.support.select import Select

from instances.choices import Role
from tests.factories import make_environment, make_herd, make_instance, make_server

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

INSTANCES = "/admin/instances/instance/"
HERDS = "/admin/herds/herd/"


@pytest.fixture
def shop():
    """Inventory rows only: nothing runs on the servers (nothing listens there)."""
    env = make_environment("prod")
    herd = make_herd("shop", environment=env, port=5432)
    primary = make_instance(
        herd=herd, server=make_server("127.0.1.251", environment=env), role=Role.PRIMARY
    )
    make_instance(herd=herd, server=make_server("127.0.1.252", environment=env), upstream=primary)
    return herd


def offered(page, path: str) -> set[str] | None:
    """The actions the list's menu offers, or None when it has no menu."""
    page.open(path)
    menus = page.find_all("select[name=action]")
    if not menus:
        return None
    return {o.get_attribute("value") for o in Select(menus[0]).options} - {""}


def test_a_dba_is_offered_every_instance_and_herd_action(page, shop):
    page.log_in("alice")

    instance_actions = offered(page, INSTANCES)
    page.shot("instance actions")
    herd_actions = offered(page, HERDS)

    assert {"restart_instances", "promote_instances", "rebuild_action"} <= instance_actions
    assert {"switchover_herds", "failover_herds", "refresh_dns_herds"} <= herd_actions


def test_an_operator_may_restart_but_not_promote_nor_switch_over(page, shop):
    page.log_in("oscar")

    instance_actions = offered(page, INSTANCES)
    page.shot("instance actions")

    assert {"start_instances", "stop_instances", "restart_instances"} <= instance_actions
    assert not {"promote_instances", "rebuild_action", "change_setting_action"} & instance_actions
    assert not {"switchover_herds", "failover_herds"} & (offered(page, HERDS) or set())
    # No add button for the inventory either.
    assert not page.find_all(".object-tools .addlink")


def test_a_viewer_gets_no_action_but_sees_everything_and_the_audit_trail(page, shop):
    page.log_in("victor")

    assert offered(page, INSTANCES) is None
    assert "127.0.1.252" in page.text("#result_list")
    page.shot("instance list")
    assert offered(page, HERDS) is None
    assert "shop" in page.text("#result_list")

    page.open("/admin/instances/auditevent/?verb=login")
    rows = page.text("#result_list")
    page.shot("audit trail")
    assert "victor" in rows and "logged in" in rows
    assert not page.find_all("select[name=action]")
    assert not page.find_all(".object-tools .addlink")
