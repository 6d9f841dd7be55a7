"""Admin actions: offered by permission, forged ones refused with 403 and logged; job pages.

Local users with explicit permissions, no LDAP: what is tested here is the admin.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client

from elephaas.auth import mirror_roles
from instances.models import Job, JobKind, JobState, JobStep
from tests.factories import make_server

User = get_user_model()
JOBS_URL = "/admin/instances/job/"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def make_user(username: str, *perms: str):
    user = User.objects.create_user(username, password="pw-" + username, is_staff=True)
    for perm in ("view_job", "view_jobstep", *perms):
        user.user_permissions.add(Permission.objects.get(codename=perm))
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user, backend=MODEL_BACKEND)
    return client


def make_job(user, state=JobState.QUEUED, output: str = "") -> Job:
    job = Job.objects.create(
        kind=JobKind.DISCOVER,
        server=make_server(),
        requested_by=user,
        requested_by_name=user.get_username(),
        state=state,
    )
    JobStep.objects.create(job=job, seq=1, name="list clusters", host="db1", output=output)
    return job


def post_action(client: Client, action: str, *jobs: Job, follow: bool = False):
    data = {"action": action, "_selected_action": [j.pk for j in jobs], "index": "0"}
    return client.post(JOBS_URL, data, follow=follow)


def offered(client: Client) -> set[str]:
    form = client.get(JOBS_URL).context["action_form"]  # None: no action at all
    return (
        set() if form is None else {name for name, _label in form.fields["action"].choices if name}
    )


def refusals(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "elephaas.audit" and "refused" in r.getMessage()
    ]


@pytest.fixture
def audit_log(caplog):
    caplog.set_level(logging.INFO, logger="elephaas.audit")
    return caplog


@pytest.mark.django_db
class TestForgedActions:
    def test_it_refuses_and_logs_an_action_the_user_is_not_offered(self, audit_log):
        viewer = make_user("viewer1")
        owner = make_user("owner1")
        job = make_job(owner)
        client = client_for(viewer)
        assert offered(client) == set()

        response = post_action(client, "cancel_jobs", job)

        assert response.status_code == 403
        job.refresh_from_db()
        assert job.state == JobState.QUEUED
        [line] = refusals(audit_log)
        assert line.startswith("action refused: 'viewer1' from 127.0.0.1 tried 'cancel_jobs'")
        assert f"[{str(job.pk)!r}]" in line

    def test_it_refuses_an_unknown_or_built_in_action_too(self, audit_log):
        client = client_for(make_user("operator1", "cancel_job"))
        job = make_job(User.objects.get(username="operator1"))

        assert post_action(client, "delete_selected", job).status_code == 403
        assert post_action(client, "drop_everything", job).status_code == 403
        assert Job.objects.filter(pk=job.pk).exists()
        assert len(refusals(audit_log)) == 2

    def test_it_leaves_an_empty_action_to_django(self, audit_log):
        user = make_user("operator2", "cancel_job")
        job = make_job(user)

        response = post_action(client_for(user), "", job, follow=True)

        assert response.status_code == 200
        assert "No action selected." in response.content.decode()
        assert refusals(audit_log) == []

    def test_it_offers_retry_only_with_its_permission(self):
        assert offered(client_for(make_user("op3", "cancel_job"))) == {"cancel_jobs"}
        both = offered(client_for(make_user("dba3", "cancel_any_job", "retry_job")))
        assert both == {"cancel_jobs", "retry_jobs"}


@pytest.mark.django_db
class TestCancelOwnership:
    def test_it_lets_cancel_job_cancel_only_ones_own_jobs(self, audit_log):
        operator = make_user("op4", "cancel_job")
        other = make_user("other4")
        own, foreign = make_job(operator), make_job(other)

        response = post_action(client_for(operator), "cancel_jobs", own, foreign, follow=True)

        assert response.status_code == 200
        own.refresh_from_db()
        foreign.refresh_from_db()
        assert own.state == JobState.CANCELLED
        assert foreign.state == JobState.QUEUED and not foreign.cancel_requested
        assert f"Job #{foreign.pk} was queued by other4" in response.content.decode()
        [line] = refusals(audit_log)
        assert line.startswith(f"cancel of job #{foreign.pk} refused: 'op4' from 127.0.0.1")

    def test_it_lets_cancel_any_job_cancel_anyones(self, audit_log):
        dba = make_user("dba5", "cancel_any_job")
        foreign = make_job(make_user("other5"))

        post_action(client_for(dba), "cancel_jobs", foreign)

        foreign.refresh_from_db()
        assert foreign.state == JobState.CANCELLED
        assert foreign.cancel_requested_by == "dba5"
        assert refusals(audit_log) == []


@pytest.mark.django_db
class TestJobPages:
    def test_it_shows_a_viewer_a_job_page_without_secrets(self):
        viewer = make_user("viewer6")
        job = make_job(viewer, JobState.FAILED, output="pg_lsclusters: 15 main 5432 online")

        response = client_for(viewer).get(job.get_absolute_url())

        assert response.status_code == 200
        page = response.content.decode()
        assert "pg_lsclusters: 15 main 5432 online" in page
        secrets = [
            settings.SECRET_KEY,
            settings.DATABASES["default"]["PASSWORD"],
            settings.PG_PROBE_PASSWORD,
            settings.DNS_TSIG_SECRET,
            settings.LDAP_BIND_PASSWORD,
        ]
        for secret in filter(None, secrets):
            assert secret not in page

    def test_it_filters_the_job_list_by_requesting_user(self):
        viewer = make_user("viewer7")
        alice, bob = make_user("alice7"), make_user("bob7")
        alices = {make_job(alice).pk, make_job(alice).pk}
        make_job(bob)
        client = client_for(viewer)

        response = client.get(JOBS_URL, {"requested_by__id__exact": alice.pk})

        assert response.status_code == 200
        assert {job.pk for job in response.context["cl"].result_list} == alices
        everyone = client.get(JOBS_URL).context["cl"].result_list
        assert {job.requested_by_name for job in everyone} >= {"alice7", "bob7"}


@pytest.mark.django_db
class TestMirrorRoles:
    def test_it_mirrors_roles_and_keeps_other_groups(self):
        user = User.objects.create_user("mirror1")
        user.groups.add(Group.objects.create(name="auditors"), Group.objects.get(name="dba"))

        mirror_roles(user, ["elephaas-viewer", "unrelated"])

        assert set(user.groups.values_list("name", flat=True)) == {"auditors", "viewer"}
        assert user.is_staff and not user.is_superuser

        mirror_roles(user, [])

        user.refresh_from_db()
        assert set(user.groups.values_list("name", flat=True)) == {"auditors"}
        assert not user.is_staff and not user.is_superuser

    def test_it_matches_ldap_group_names_case_insensitively(self):
        user = User.objects.create_user("mirror2")

        roles = mirror_roles(user, ["ELEPHAAS-ADMINS", "Elephaas-Operator"])

        user.refresh_from_db()
        assert roles == {"operator"}
        assert user.is_superuser and user.is_staff


def _auth_settings_with(env: dict[str, str]) -> dict:
    """The auth settings as a process started with these variables (and no lab file) sees them."""
    code = (
        "import json, ldap, django; django.setup(); from django.conf import settings as s; "
        "o = s.AUTH_LDAP_CONNECTION_OPTIONS; print(json.dumps({"
        "'backends': s.AUTHENTICATION_BACKENDS, 'start_tls': s.AUTH_LDAP_START_TLS, "
        "'timeouts': [o[ldap.OPT_NETWORK_TIMEOUT], o[ldap.OPT_TIMEOUT]], "
        "'user_search': [s.AUTH_LDAP_USER_SEARCH.base_dn, s.AUTH_LDAP_USER_SEARCH.filterstr], "
        "'group_type': type(s.AUTH_LDAP_GROUP_TYPE).__name__, "
        "'roles': s.LDAP_ROLE_GROUPS, 'superuser': s.LDAP_SUPERUSER_GROUP}))"
    )
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("ELEPHAAS_")}
    full_env.update(
        DJANGO_SETTINGS_MODULE="elephaas.settings",
        ELEPHAAS_ENV_FILE="/nonexistent",
        ELEPHAAS_SECRET_KEY="x" * 50,
        **env,
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=settings.BASE_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_it_uses_local_users_only_without_an_ldap_uri():
    assert _auth_settings_with({})["backends"] == [MODEL_BACKEND]


def test_it_configures_ldap_from_the_environment():
    seen = _auth_settings_with(
        {
            "ELEPHAAS_LDAP_URI": "ldap://ldap.example.test",
            "ELEPHAAS_LDAP_TIMEOUT": "3",
            "ELEPHAAS_LDAP_START_TLS": "yes",
            "ELEPHAAS_LDAP_USER_BASE": "ou=staff,dc=example,dc=test",
            "ELEPHAAS_LDAP_GROUP_DBA": "pg-dba",
            "ELEPHAAS_LDAP_GROUP_SUPERUSER": "",
        }
    )

    # LDAP first; local accounts (the break-glass superuser) after it.
    assert seen["backends"] == ["elephaas.auth.ElephaasLDAPBackend", MODEL_BACKEND]
    assert seen["timeouts"] == [3, 3]
    assert seen["start_tls"] is True
    assert seen["user_search"] == ["ou=staff,dc=example,dc=test", "(uid=%(user)s)"]
    assert seen["group_type"] == "GroupOfNamesType"
    assert seen["roles"] == {
        "dba": "pg-dba",
        "operator": "elephaas-operator",
        "viewer": "elephaas-viewer",
    }
    assert seen["superuser"] == ""
