"""LDAP logins, roles mirrored from LDAP groups, the audit log, a dead or hung LDAP server.

Against the lab's real slapd (users alice/dba, oscar/operator, victor/viewer, sam/admins).
Logins go through the admin login page, as a browser's do, so the request (remote
address, messages) is there as in production.
"""

from __future__ import annotations

import logging
import socket
import time

import ldap
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client, override_settings

from elephaas.auth import UNREACHABLE_MESSAGE
from instances.models import Job, JobKind, JobState, JobStep
from lab import fleet
from tests.factories import make_server

pytestmark = [pytest.mark.lab, pytest.mark.django_db]

User = get_user_model()
LOGIN_URL = "/admin/login/?next=/admin/"
JOBS_URL = "/admin/instances/job/"
ADMIN_DN = f"cn=admin,{fleet.LDAP_BASE}"


@pytest.fixture
def ldap_users(lab) -> dict[str, dict[str, str]]:
    return fleet.ldap_users()


@pytest.fixture
def audit_log(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def audit_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "elephaas.audit"]


def log_in(client: Client, username: str, password: str):
    return client.post(LOGIN_URL, {"username": username, "password": password})


def log_in_as(client: Client, ldap_users, username: str) -> None:
    response = log_in(client, username, ldap_users[username]["password"])
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert response["Location"] == "/admin/"


def roles_of(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def fresh(username: str):
    # A new object: has_perm caches permissions on the instance.
    return User.objects.get(username=username)


def make_job(user, state=JobState.QUEUED) -> Job:
    job = Job.objects.create(
        kind=JobKind.DISCOVER,
        server=make_server(),
        requested_by=user,
        requested_by_name=user.get_username(),
        state=state,
    )
    JobStep.objects.create(job=job, seq=1, name="list clusters", host="db1", output="5432 main")
    return job


def offered_actions(client: Client) -> set[str]:
    response = client.get(JOBS_URL)
    assert response.status_code == 200
    form = response.context["action_form"]  # None: no action at all
    return (
        set() if form is None else {name for name, _label in form.fields["action"].choices if name}
    )


def forge_action(client: Client, action: str, job: Job):
    return client.post(JOBS_URL, {"action": action, "_selected_action": [job.pk], "index": "0"})


@pytest.fixture
def ldap_admin(lab):
    conn = ldap.initialize(settings.AUTH_LDAP_SERVER_URI, bytes_mode=False)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5)
    conn.simple_bind_s(ADMIN_DN, (fleet.SECRETS_DIR / "ldap_admin_password").read_text().strip())
    yield conn
    conn.unbind_s()


def members(conn, group_dn: str) -> list[bytes]:
    [(_dn, attrs)] = conn.search_s(group_dn, ldap.SCOPE_BASE, attrlist=["member"])
    return attrs["member"]


# --- the roles --------------------------------------------------------------------------


ROLE_APPS = ("herds", "instances")
OPERATIONS = {
    "instances.start_instance",
    "instances.stop_instance",
    "instances.restart_instance",
    "instances.reload_instance",
    "instances.discover_server",
    "instances.cancel_job",
}
DBA_EXTRA = {
    "instances.promote_instance",
    "instances.rebuild_instance",
    "instances.remaster_instance",
    "instances.init_instance",
    "instances.pin_host_key",
    "instances.retry_job",
    "instances.cancel_any_job",
    "herds.switchover_herd",
    "herds.failover_herd",
    "herds.refresh_dns",
    # instances 0011: DBAs (who run site drills) pause, resume and abandon campaigns
    "instances.control_campaign",
    # instances 0015: DBAs change PostgreSQL settings (ALTER SYSTEM)
    "instances.configure_instance",
} | {
    f"{app}.{verb}_{model}"
    for app, model in [
        ("herds", "environment"),
        ("herds", "herd"),
        ("herds", "drcandidate"),
        ("instances", "server"),
        ("instances", "instance"),
    ]
    for verb in ("add", "change", "delete")
}


def role_perms(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in group.permissions.select_related("content_type")
    }


def view_perms_of_models_at(nodes=None) -> set[str]:
    """View permissions of the herds and instances models in the migrated state."""
    state = MigrationLoader(connection).project_state(nodes)
    return {
        f"{app}.view_{model._meta.model_name}"
        for app in ROLE_APPS
        for model in state.apps.get_app_config(app).get_models()
    }


def test_it_made_the_three_roles_with_their_permissions():
    viewer, operator, dba = role_perms("viewer"), role_perms("operator"), role_perms("dba")
    views_then = view_perms_of_models_at(("herds", "0004_roles"))
    assert {"herds.view_drpair", "instances.view_job", "instances.view_jobstep"} <= views_then

    assert views_then <= viewer
    assert all(perm.split(".")[1].startswith("view_") for perm in viewer)
    assert all(perm.split(".")[0] in ROLE_APPS for perm in viewer)
    assert operator == viewer | OPERATIONS
    assert dba == operator | DBA_EXTRA


def test_it_lets_the_viewer_role_see_every_migrated_model():
    missing = view_perms_of_models_at() - role_perms("viewer")
    assert not missing, (
        f"{sorted(missing)}: a new model needs a migration giving its view permission to the "
        "viewer, operator and dba roles (herds/migrations/0004_roles.py is frozen)"
    )


# --- LDAP logins and roles ------------------------------------------------------------------


def test_it_logs_in_a_dba_with_the_dba_role(client, ldap_users, audit_log):
    log_in_as(client, ldap_users, "alice")

    alice = fresh("alice")
    assert roles_of("alice") == {"dba"}
    assert alice.is_staff and not alice.is_superuser
    assert not alice.has_usable_password()
    assert (alice.first_name, alice.email) == ("Alice", "alice@elephaas.test")
    assert alice.has_perm("herds.failover_herd")
    assert alice.has_perm("instances.cancel_any_job")
    assert client.get(JOBS_URL).status_code == 200
    assert "login: 'alice' from 127.0.0.1 via LDAP" in audit_lines(audit_log)
    assert ldap_users["alice"]["password"] not in audit_log.text


def test_it_makes_the_admins_group_superusers(client, ldap_users):
    log_in_as(client, ldap_users, "sam")

    sam = fresh("sam")
    assert sam.is_superuser and sam.is_staff
    assert roles_of("sam") == set()


def test_it_gives_an_operator_operations_but_not_retry_or_failover(client, ldap_users, audit_log):
    log_in_as(client, ldap_users, "oscar")
    oscar = fresh("oscar")
    assert roles_of("oscar") == {"operator"}
    assert oscar.has_perm("instances.restart_instance")
    assert not oscar.has_perm("herds.failover_herd")
    assert not oscar.has_perm("instances.retry_job")
    failed = make_job(oscar, JobState.FAILED)

    assert offered_actions(client) == {"cancel_jobs"}
    response = forge_action(client, "retry_jobs", failed)

    assert response.status_code == 403
    assert not Job.objects.filter(retry_of=failed).exists()
    [line] = [line for line in audit_lines(audit_log) if line.startswith("action refused")]
    assert "'oscar' from 127.0.0.1 tried 'retry_jobs' on instances.job" in line


def test_it_lets_a_viewer_see_lists_and_job_pages_but_nothing_else(client, ldap_users, audit_log):
    log_in_as(client, ldap_users, "victor")
    victor = fresh("victor")
    assert roles_of("victor") == {"viewer"}
    alice = User.objects.create_user("alice-local-owner")
    job = make_job(alice)

    for url in ["/admin/", JOBS_URL, "/admin/herds/herd/", "/admin/instances/instance/"]:
        assert client.get(url).status_code == 200, url
    page = client.get(job.get_absolute_url())
    assert page.status_code == 200
    assert "list clusters" in page.content.decode()
    assert client.get("/admin/herds/herd/add/").status_code == 403
    assert offered_actions(client) == set()
    for perm in [
        "herds.add_herd",
        "instances.change_instance",
        "instances.restart_instance",
        "instances.cancel_job",
    ]:
        assert not victor.has_perm(perm), perm

    response = forge_action(client, "cancel_jobs", job)

    assert response.status_code == 403
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and not job.cancel_requested
    assert any(
        line.startswith("action refused: 'victor'") and "'cancel_jobs'" in line
        for line in audit_lines(audit_log)
    )


def test_it_applies_ldap_group_changes_at_the_next_login(ldap_users, ldap_admin):
    oscar_dn = ldap_users["oscar"]["dn"].encode()
    operators = f"cn=elephaas-operator,ou=groups,{fleet.LDAP_BASE}"
    viewers = f"cn=elephaas-viewer,ou=groups,{fleet.LDAP_BASE}"
    log_in_as(Client(), ldap_users, "oscar")
    assert roles_of("oscar") == {"operator"}
    saved = {dn: members(ldap_admin, dn) for dn in (operators, viewers)}
    try:
        ldap_admin.modify_s(viewers, [(ldap.MOD_ADD, "member", [oscar_dn])])
        # groupOfNames needs a member: the admin stands in if oscar was the only one.
        left = [m for m in saved[operators] if m != oscar_dn] or [ADMIN_DN.encode()]
        ldap_admin.modify_s(operators, [(ldap.MOD_REPLACE, "member", left)])

        log_in_as(Client(), ldap_users, "oscar")

        assert roles_of("oscar") == {"viewer"}
        oscar = fresh("oscar")
        assert oscar.is_staff
        assert oscar.has_perm("instances.view_instance")
        assert not oscar.has_perm("instances.restart_instance")
    finally:
        for dn, original in saved.items():
            ldap_admin.modify_s(dn, [(ldap.MOD_REPLACE, "member", original)])
    assert members(ldap_admin, operators) == saved[operators]


def test_it_refuses_and_logs_a_wrong_password(client, ldap_users, audit_log):
    wrong = ldap_users["alice"]["password"] + "-wrong"

    response = log_in(client, "alice", wrong)

    assert response.status_code == 200
    assert "Please enter the correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert "login refused: 'alice' from 127.0.0.1" in audit_lines(audit_log)
    assert wrong not in audit_log.text


def test_it_refuses_and_logs_an_unknown_user(client, audit_log):
    response = log_in(client, "mallory", "guess")

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert not User.objects.filter(username="mallory").exists()
    assert "login refused: 'mallory' from 127.0.0.1" in audit_lines(audit_log)
    assert "guess" not in audit_log.text


# --- LDAP down or hung: local accounts still work -------------------------------------------


@pytest.fixture
def breakglass():
    password = "break-glass-" + str(time.time_ns())
    User.objects.create_superuser("breakglass", password=password)
    return password


@override_settings(AUTH_LDAP_SERVER_URI="ldap://127.0.0.1:1")
def test_it_says_ldap_is_unreachable_and_lets_a_local_superuser_in(
    client, ldap_users, breakglass, audit_log
):
    response = log_in(client, "alice", ldap_users["alice"]["password"])

    assert response.status_code == 200
    assert UNREACHABLE_MESSAGE in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert any(
        line.startswith("LDAP unreachable while checking 'alice' from 127.0.0.1")
        for line in audit_lines(audit_log)
    )

    response = log_in(client, "breakglass", breakglass)

    assert response.status_code == 302
    assert client.get(JOBS_URL).status_code == 200
    assert "login: 'breakglass' from 127.0.0.1 via local account" in audit_lines(audit_log)


@pytest.fixture
def hung_ldap():
    """A TCP port that accepts connections (the kernel does) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    host, port = listener.getsockname()
    timeout = 2
    with override_settings(
        AUTH_LDAP_SERVER_URI=f"ldap://{host}:{port}",
        AUTH_LDAP_CONNECTION_OPTIONS={
            ldap.OPT_NETWORK_TIMEOUT: timeout,
            ldap.OPT_TIMEOUT: timeout,
            ldap.OPT_REFERRALS: 0,
        },
    ):
        yield timeout
    listener.close()


def test_it_fails_a_login_within_seconds_when_ldap_hangs(client, ldap_users, hung_ldap, audit_log):
    started = time.monotonic()
    response = log_in(client, "alice", ldap_users["alice"]["password"])
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert UNREACHABLE_MESSAGE in response.content.decode()
    # It did wait on the silent server (so the listener was really hit), but not long.
    assert hung_ldap * 0.75 <= elapsed < 8
    assert any(
        line.startswith("LDAP unreachable while checking 'alice'")
        and line.endswith("no answer within the timeout")
        for line in audit_lines(audit_log)
    )


def test_it_lets_the_break_glass_superuser_in_at_once_when_ldap_hangs(
    client, breakglass, hung_ldap
):
    started = time.monotonic()
    response = log_in(client, "breakglass", breakglass)
    elapsed = time.monotonic() - started

    assert response.status_code == 302
    assert elapsed < hung_ldap / 2  # its password never went to LDAP
    assert client.get(JOBS_URL).status_code == 200


def _herd_with_primary_and_replica():
    from instances.choices import Role
    from tests.factories import make_environment, make_herd, make_instance

    env = make_environment("prod")
    herd = make_herd("shop", environment=env, port=5432)
    # Addresses nothing listens on: a worker picking these jobs up fails them harmlessly.
    primary = make_instance(
        herd=herd,
        server=make_server("127.0.1.251", environment=env),
        role=Role.PRIMARY,
        online=True,
        last_lsn="0/5000000",
    )
    make_instance(
        herd=herd,
        server=make_server("127.0.1.252", environment=env),
        upstream=primary,
        online=True,
        replay_lsn="0/5000000",
    )
    return herd


def test_it_lets_an_ldap_dba_queue_a_switchover(client, ldap_users):
    herd = _herd_with_primary_and_replica()
    log_in_as(client, ldap_users, "alice")
    response = client.post(
        "/admin/herds/herd/",
        {"action": "switchover_herds", "confirm": "yes", "_selected_action": [herd.pk]},
    )
    assert response.status_code == 302
    [job] = Job.objects.filter(kind=JobKind.SWITCHOVER)
    assert job.herd == herd and job.requested_by_name == "alice"


def test_it_refuses_a_forged_failover_from_an_ldap_operator(client, ldap_users, audit_log):
    herd = _herd_with_primary_and_replica()
    log_in_as(client, ldap_users, "oscar")
    page = client.get("/admin/herds/herd/").content.decode()
    assert "failover_herds" not in page and "switchover_herds" not in page
    response = client.post(
        "/admin/herds/herd/",
        {"action": "failover_herds", "confirm": "yes", "_selected_action": [herd.pk]},
    )
    assert response.status_code == 403
    assert not Job.objects.exists()
    assert any("tried 'failover_herds'" in line for line in audit_lines(audit_log))
