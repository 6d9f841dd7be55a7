"""The audit trail: a row (and a log line) for every login, refusal, job queued, cancelled
or retried, inventory edit, host-key pin and drill; its retention; its admin list.

Local users in the migrated roles drive the admin (LDAP is tested against the lab's slapd
where a login is what is audited). Requests come from the test client, whose address is
127.0.0.1.
"""

from __future__ import annotations

import io
import logging
from datetime import timedelta

import ldap
import pytest
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from elephaas.admin_security import AuditedActionsMixin
from herds.models import DRCandidate, Environment, Herd
from instances import audit
from instances.admin.audit import AuditEventAdmin
from instances.choices import AuditVerb, CampaignKind, CampaignState, JobKind, JobState, Role
from instances.jobs import campaigns, queue, runner
from instances.models import AuditEvent, Campaign, Instance, Job, Server
from instances.tasks import prune_audit_events
from lab import fleet
from tests.factories import make_environment, make_herd, make_instance, make_server

User = get_user_model()
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
LOGIN_URL = "/admin/login/?next=/admin/"
AUDIT_URL = reverse("admin:instances_auditevent_changelist")
JOBS_URL = reverse("admin:instances_job_changelist")
HERDS_URL = reverse("admin:herds_herd_changelist")
INSTANCES_URL = reverse("admin:instances_instance_changelist")
# Nothing listens on these lab-range loopback addresses: a job sent there fails harmlessly.
NOWHERE = ("127.0.1.251", "127.0.1.252")


def user_in(role: str, username: str | None = None):
    user = User.objects.create_user(username or role, password="unused-" + role, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user, backend=MODEL_BACKEND)
    return client


def events(verb: AuditVerb | None = None, **filters) -> list[AuditEvent]:
    """The events of one verb, or all but logins (client_for's force_login is one)."""
    found = AuditEvent.objects.filter(**filters).order_by("at", "id")
    return list(found.filter(verb=verb) if verb else found.exclude(verb=AuditVerb.LOGIN))


def audit_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "elephaas.audit"]


@pytest.fixture
def audit_log(caplog):
    caplog.set_level(logging.INFO, logger="elephaas.audit")
    return caplog


def herd_with_replicas(name: str = "shop"):
    env = make_environment("prod")
    herd = make_herd(name, environment=env, port=5432)
    primary = make_instance(
        herd=herd,
        server=make_server(NOWHERE[0], environment=env),
        role=Role.PRIMARY,
        online=True,
        last_lsn="0/5000000",
    )
    replica = make_instance(
        herd=herd,
        server=make_server(NOWHERE[1], environment=env),
        upstream=primary,
        online=True,
        replay_lsn="0/5000000",
    )
    return herd, primary, replica


def page_form_data(response) -> dict:
    """What a browser posts back from an admin add or change page left as it is: the
    main form and every inline formset, management forms included."""
    data: dict = {}

    def add(form) -> None:
        for bound in form:
            value = bound.value()
            if isinstance(bound.field, forms.BooleanField):
                if value:
                    data[bound.html_name] = "on"
            elif isinstance(value, list | tuple):
                data[bound.html_name] = [str(v) for v in value]
            else:
                data[bound.html_name] = "" if value is None else str(value)

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        add(inline.formset.management_form)
        for form in inline.formset.forms:
            add(form)
    return data


# --- the row and the log line, whatever happens around them ---------------------------------


@pytest.mark.django_db
class TestRecord:
    def test_it_writes_one_row_and_one_log_line_from_one_message(self, audit_log):
        server = make_server("db1.example.test")

        row = audit.record(
            AuditVerb.CHANGED,
            "'alice' from 10.0.0.7 changed server db1.example.test: ssh_port: '22' → '2222'",
            username="alice",
            remote="10.0.0.7",
            obj=server,
            changes={"ssh_port": ["22", "2222"]},
        )

        assert row is not None
        [stored] = events()
        assert (stored.username, stored.remote, stored.verb) == ("alice", "10.0.0.7", "changed")
        assert (stored.object_type, stored.object_id) == ("instances.server", str(server.pk))
        assert stored.object_repr == "db1.example.test"
        assert stored.changes == {"ssh_port": ["22", "2222"]}
        assert audit_lines(audit_log) == [stored.message]
        assert stored.object_url == reverse("admin:instances_server_change", args=[server.pk])

    def test_it_logs_refusals_as_warnings(self, audit_log):
        audit.record(AuditVerb.ACTION_REFUSED, "no", username="x", remote="-")
        audit.record(AuditVerb.LOGIN, "yes", username="x", remote="-")
        levels = [r.levelno for r in audit_log.records if r.name == "elephaas.audit"]
        assert levels == [logging.WARNING, logging.INFO]

    def test_it_commits_or_rolls_back_with_the_action_around_it(self):
        server = make_server()
        with pytest.raises(RuntimeError), transaction.atomic():
            queue.create_jobs(JobKind.DISCOVER, [server], queue=False)
            assert len(events(AuditVerb.JOB_QUEUED)) == 1
            raise RuntimeError("the action failed after its jobs were created")

        assert not Job.objects.exists()
        assert events() == []

    def test_it_never_breaks_the_action_when_the_row_cannot_be_written(self, audit_log):
        # A real refusal by the database: every insert into the table breaks a constraint.
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE instances_auditevent ADD CONSTRAINT refuse_all CHECK (false) NOT VALID"
            )
        server = make_server()

        with transaction.atomic():
            [job] = queue.create_jobs(JobKind.DISCOVER, [server], queue=False)
            # The action's transaction goes on: the failed insert rolled back its savepoint.
            Job.objects.filter(pk=job.pk).update(summary="still writable")

        assert Job.objects.get(pk=job.pk).summary == "still writable"
        lines = audit_lines(audit_log)
        assert f"queued job #{job.pk} discover on {server.hostname} for (web admin)" in lines
        assert any(
            line.startswith("the audit row of this event was not written (IntegrityError")
            and line.endswith(f"queued job #{job.pk} discover on {server.hostname} for (web admin)")
            for line in lines
        )
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE instances_auditevent DROP CONSTRAINT refuse_all")
        assert events() == []

    def test_it_keeps_a_message_on_one_line_and_cuts_it_to_fit(self):
        row = audit.record(
            AuditVerb.LOGIN, "a\nb  c" + "x" * 600, username="u" * 200, remote="r" * 100
        )
        row.refresh_from_db()
        assert row.message.startswith("a b cxxx") and len(row.message) == 500
        assert len(row.username) == 150 and len(row.remote) == 64


# --- logins (LDAP on the lab's slapd) -------------------------------------------------------


@pytest.fixture
def ldap_users(lab) -> dict[str, dict[str, str]]:
    return fleet.ldap_users()


def log_in(client: Client, username: str, password: str):
    return client.post(LOGIN_URL, {"username": username, "password": password})


@pytest.mark.lab
@pytest.mark.django_db
class TestLogins:
    def test_it_records_an_ldap_login_and_a_logout(self, client, ldap_users):
        assert log_in(client, "alice", ldap_users["alice"]["password"]).status_code == 302
        client.post("/admin/logout/")

        [login] = events(AuditVerb.LOGIN)
        assert (login.username, login.remote) == ("alice", "127.0.0.1")
        assert login.message == "login: 'alice' from 127.0.0.1 via LDAP"
        assert login.object_type == "auth.user"
        [logout] = events(AuditVerb.LOGOUT)
        assert (logout.username, logout.remote) == ("alice", "127.0.0.1")

    def test_it_records_a_wrong_password_without_the_password(self, client, ldap_users):
        wrong = ldap_users["oscar"]["password"] + "-wrong"

        assert log_in(client, "oscar", wrong).status_code == 200

        [refused] = events(AuditVerb.LOGIN_REFUSED)
        assert (refused.username, refused.remote) == ("oscar", "127.0.0.1")
        assert refused.message == "login refused: 'oscar' from 127.0.0.1"
        stored = AuditEvent.objects.filter(message__contains=wrong) | AuditEvent.objects.filter(
            changes__icontains=wrong
        )
        assert not stored.exists()
        assert events(AuditVerb.LOGIN) == []

    def test_it_records_an_unknown_user(self, client):
        log_in(client, "mallory", "guess")

        [refused] = events(AuditVerb.LOGIN_REFUSED)
        assert refused.username == "mallory" and refused.remote == "127.0.0.1"

    @override_settings(AUTH_LDAP_SERVER_URI="ldap://127.0.0.1:1")
    def test_it_says_when_ldap_was_unreachable(self, client, ldap_users):
        log_in(client, "victor", ldap_users["victor"]["password"])

        [refused] = events(AuditVerb.LOGIN_REFUSED)
        assert refused.message == "login refused: 'victor' from 127.0.0.1 (LDAP unreachable)"

    def test_it_records_an_ldap_user_in_no_elephaas_group(self, client, ldap_users):
        viewers = f"cn=elephaas-viewer,ou=groups,{fleet.LDAP_BASE}"
        admin_dn = f"cn=admin,{fleet.LDAP_BASE}"
        conn = ldap.initialize(settings.AUTH_LDAP_SERVER_URI, bytes_mode=False)
        conn.simple_bind_s(
            admin_dn, (fleet.SECRETS_DIR / "ldap_admin_password").read_text().strip()
        )
        [(_dn, attrs)] = conn.search_s(viewers, ldap.SCOPE_BASE, attrlist=["member"])
        saved = attrs["member"]
        victor = ldap_users["victor"]["dn"].encode()
        # groupOfNames needs a member: the admin stands in if victor was the only one.
        left = [m for m in saved if m != victor] or [admin_dn.encode()]
        try:
            conn.modify_s(viewers, [(ldap.MOD_REPLACE, "member", left)])

            response = log_in(client, "victor", ldap_users["victor"]["password"])
        finally:
            conn.modify_s(viewers, [(ldap.MOD_REPLACE, "member", saved)])
            conn.unbind_s()

        assert response.status_code == 200 and "_auth_user_id" not in client.session
        [refused] = events(AuditVerb.LOGIN_REFUSED)
        assert refused.username == "victor" and refused.remote == "127.0.0.1"
        assert refused.message.endswith("is in LDAP but in no ElepHaaS group")


# --- refused actions ------------------------------------------------------------------------


@pytest.mark.django_db
class TestRefusals:
    def test_it_records_a_forged_action(self):
        viewer = user_in("viewer", "victor")
        job = Job.objects.create(kind=JobKind.DISCOVER, server=make_server())

        response = client_for(viewer).post(
            JOBS_URL, {"action": "cancel_jobs", "_selected_action": [job.pk], "index": "0"}
        )

        assert response.status_code == 403
        [refused] = events(AuditVerb.ACTION_REFUSED)
        assert (refused.username, refused.remote) == ("victor", "127.0.0.1")
        assert refused.object_type == "instances.job" and refused.object_id == ""
        assert "tried 'cancel_jobs' on instances.job" in refused.message

    def test_it_records_a_refused_page_that_is_not_an_action(self):
        operator = user_in("operator", "oscar")
        server = make_server()

        url = reverse("admin:instances_server_pin_host_key", args=[server.pk])
        assert client_for(operator).get(url).status_code == 403

        [refused] = events(AuditVerb.ACTION_REFUSED)
        assert refused.username == "oscar"
        assert refused.message == (
            "pin host keys refused: 'oscar' from 127.0.0.1 lacks instances.pin_host_key"
        )

    def test_it_records_a_refused_post_to_an_add_change_or_delete_page(self):
        operator = user_in("operator", "oscar")
        client = client_for(operator)
        herd = make_herd()

        assert client.get(reverse("admin:herds_herd_add")).status_code == 403
        assert events() == []  # a link followed is no attempt
        posts = [
            reverse("admin:herds_herd_add"),
            reverse("admin:herds_herd_change", args=[herd.pk]),
            reverse("admin:herds_herd_delete", args=[herd.pk]),
        ]
        for url in posts:
            assert client.post(url, {"name": "evil", "post": "yes"}).status_code == 403

        refused = events(AuditVerb.ACTION_REFUSED)
        assert [r.message.split(" refused")[0] for r in refused] == ["add", "change", "delete"]
        assert all(r.username == "oscar" and r.object_type == "herds.herd" for r in refused)
        assert Herd.objects.get(pk=herd.pk).name == herd.name

    def test_it_records_a_cancel_of_someone_elses_job(self):
        operator = user_in("operator", "oscar")
        job = Job.objects.create(
            kind=JobKind.DISCOVER, server=make_server(), requested_by_name="alice"
        )

        client_for(operator).post(
            JOBS_URL, {"action": "cancel_jobs", "_selected_action": [job.pk], "index": "0"}
        )

        [refused] = events(AuditVerb.ACTION_REFUSED)
        assert refused.object_id == str(job.pk) and refused.username == "oscar"
        assert events(AuditVerb.JOB_CANCELLED) == []


# --- jobs queued, cancelled, retried; drills --------------------------------------------------


@pytest.mark.django_db
class TestJobs:
    def test_it_records_each_job_a_confirmed_action_queues(self):
        herd, primary, replica = herd_with_replicas()
        operator = user_in("operator", "oscar")

        response = client_for(operator).post(
            INSTANCES_URL,
            {
                "action": "restart_instances",
                "_selected_action": [primary.pk, replica.pk],
                "confirm": "yes",
                "mode": "fast",
            },
        )

        assert response.status_code == 302
        jobs = list(Job.objects.order_by("pk"))
        queued = events(AuditVerb.JOB_QUEUED)
        assert [e.object_id for e in queued] == [str(j.pk) for j in jobs]
        assert all((e.username, e.remote) == ("oscar", "127.0.0.1") for e in queued)
        assert (
            queued[0].message
            == f"queued job #{jobs[0].pk} restart on {jobs[0].target_label} for oscar"
        )

    def test_it_records_a_cancel_and_a_retry(self):
        dba = user_in("dba", "alice")
        server = make_server()
        [queued] = queue.create_jobs(JobKind.DISCOVER, [server], queue=False)
        client = client_for(dba)

        client.post(
            JOBS_URL, {"action": "cancel_jobs", "_selected_action": [queued.pk], "index": "0"}
        )
        client.post(
            JOBS_URL, {"action": "retry_jobs", "_selected_action": [queued.pk], "index": "0"}
        )

        [cancelled] = events(AuditVerb.JOB_CANCELLED)
        assert (cancelled.username, cancelled.remote) == ("alice", "127.0.0.1")
        assert cancelled.message == f"job #{queued.pk} cancelled by alice before it started"
        [retried] = events(AuditVerb.JOB_RETRIED)
        new = Job.objects.get(retry_of=queued)
        assert new.batch == queued.batch
        assert retried.object_id == str(new.pk) and retried.username == "alice"
        assert retried.message.startswith(f"retried job #{queued.pk} as #{new.pk} discover")

    def test_it_records_a_switchover_queued_from_the_herds_list_as_a_drill(self):
        herd, _primary, _replica = herd_with_replicas()
        dba = user_in("dba", "alice")

        response = client_for(dba).post(
            HERDS_URL,
            {"action": "switchover_herds", "confirm": "yes", "_selected_action": [herd.pk]},
        )

        assert response.status_code == 302
        [job] = Job.objects.filter(kind=JobKind.SWITCHOVER)
        [drill] = events(AuditVerb.DRILL_QUEUED)
        assert (drill.username, drill.remote, drill.object_id) == (
            "alice",
            "127.0.0.1",
            str(job.pk),
        )
        assert events(AuditVerb.JOB_QUEUED) == []

    def test_it_records_the_end_of_a_drill_the_reaper_failed(self):
        herd, _primary, _replica = herd_with_replicas()
        [job] = queue.create_jobs(JobKind.FAILOVER, [herd], queue=False)
        Job.objects.filter(pk=job.pk).update(
            state=JobState.RUNNING,
            worker="elsewhere:1",
            requested_by_name="alice",
            heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_LOST_AFTER + 5),
        )

        assert runner.reap_lost_jobs() == 1

        [ended] = events(AuditVerb.DRILL_ENDED)
        assert (ended.username, ended.remote, ended.object_id) == ("alice", "worker", str(job.pk))
        assert ended.message.startswith(f"job #{job.pk} failover failed on shop for alice: ")
        assert "stopped answering" in ended.message

    def test_it_records_what_the_schedule_and_the_cli_queue_as_theirs(self):
        server = make_server()
        queue.create_jobs(JobKind.FENCE, [make_instance()], origin="schedule", queue=False)
        queue.create_jobs(JobKind.DISCOVER, [server], origin="cli", queue=False)

        fence, discover = events(AuditVerb.JOB_QUEUED)
        assert (fence.username, fence.remote) == ("(schedule)", "worker")
        assert (discover.username, discover.remote) == ("(management command)", "cli")


@pytest.mark.django_db(transaction=True)
def test_it_records_the_end_of_a_drill_run_by_a_worker():
    """The runner's real lifecycle in this process: a switchover of a herd whose members
    do not answer is refused by its plan, and its end is recorded "from" the worker."""
    herd, _primary, _replica = herd_with_replicas()
    dba = User.objects.create_user("alice")
    [job] = queue.create_jobs(JobKind.SWITCHOVER, [herd], user=dba, queue=False, remote="10.1.1.1")

    [job] = runner.run_inline([job])

    assert job.state == JobState.FAILED
    [queued] = events(AuditVerb.DRILL_QUEUED)
    assert (queued.username, queued.remote) == ("alice", "10.1.1.1")
    [ended] = events(AuditVerb.DRILL_ENDED)
    assert (ended.username, ended.remote, ended.object_id) == ("alice", "worker", str(job.pk))
    assert ended.message == f"job #{job.pk} switchover failed on shop for alice: {job.error}"


@pytest.mark.django_db
class TestCampaigns:
    def test_it_records_a_site_drill_queued_and_its_outcome(self):
        herd, _primary, _replica = herd_with_replicas()
        dba = user_in("dba", "alice")

        campaign = campaigns.create(
            CampaignKind.SITE_SWITCHOVER,
            "Move 1 herd(s) to the DR site: shop",
            [campaigns.Entry(JobKind.SWITCHOVER, herd)],
            user=dba,
            halt_on_failure=False,
            remote="10.2.2.2",
        )
        [job] = campaign.jobs.all()
        Job.objects.filter(pk=job.pk).update(state=JobState.FAILED, held=False)
        campaigns.advance(campaign.pk)

        [site] = events(AuditVerb.SITE_DRILL_QUEUED)
        assert (site.username, site.remote, site.object_type) == (
            "alice",
            "10.2.2.2",
            "instances.campaign",
        )
        [drill] = events(AuditVerb.DRILL_QUEUED)
        assert drill.object_id == str(job.pk) and f"in campaign #{campaign.pk}" in drill.message
        [ended] = events(AuditVerb.SITE_DRILL_ENDED)
        assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.FAILED
        assert (ended.username, ended.remote) == ("alice", "worker")
        assert ended.message.startswith(f"campaign #{campaign.pk} site_switchover (")
        assert " ended failed: " in ended.message

    def test_it_records_pause_resume_and_abandon_from_the_campaign_page(
        self, django_capture_on_commit_callbacks
    ):
        herd, _primary, _replica = herd_with_replicas()
        dba = user_in("dba", "alice")
        campaign = campaigns.create(
            CampaignKind.ROLLING_RESTART,
            "Rolling restart of 1 herd(s): shop",
            [campaigns.Entry(JobKind.ROLLING_RESTART, herd)],
            user=dba,
        )
        client = client_for(dba)

        def control(verb: str) -> int:
            url = reverse("admin:instances_campaign_control", args=[campaign.pk, verb])
            return client.post(url).status_code

        assert control("pause") == 302
        # Not released (its advance waits for a commit that never comes in this test):
        assert control("resume") == 302
        # Abandoning cancels the held job; the advance after the commit ends the campaign.
        with django_capture_on_commit_callbacks(execute=True):
            assert control("abandon") == 302

        verbs = [e.verb for e in events() if e.object_type == "instances.campaign"]
        assert verbs == [
            AuditVerb.CAMPAIGN_QUEUED,
            AuditVerb.CAMPAIGN_PAUSED,
            AuditVerb.CAMPAIGN_RESUMED,
            AuditVerb.CAMPAIGN_ABANDONED,
            AuditVerb.CAMPAIGN_ENDED,
        ]
        controlled = events(object_type="instances.campaign")[1:]
        assert {(e.username, e.remote) for e in controlled} == {("alice", "127.0.0.1")}


# --- inventory edits and host-key pins -------------------------------------------------------


@pytest.mark.django_db
class TestInventoryEdits:
    def test_it_records_an_addition_with_its_values(self):
        client = client_for(user_in("dba", "alice"))

        response = client.post(
            reverse("admin:herds_environment_add"), {"name": "qa", "description": "tests"}
        )

        assert response.status_code == 302
        env = Environment.objects.get(name="qa")
        [added] = events(AuditVerb.ADDED)
        assert (added.username, added.remote) == ("alice", "127.0.0.1")
        assert (added.object_type, added.object_id, added.object_repr) == (
            "herds.environment",
            str(env.pk),
            "qa",
        )
        assert added.changes == {"name": [None, "qa"], "description": [None, "tests"]}

    def test_it_records_what_changed_on_a_server_and_nothing_when_nothing_did(self):
        client = client_for(user_in("dba", "alice"))
        prod, dr = make_environment("prod"), make_environment("dr")
        server = make_server("db1.example.test", environment=prod)
        url = reverse("admin:instances_server_change", args=[server.pk])
        data = page_form_data(client.get(url))

        assert client.post(url, data).status_code == 302
        assert events() == []
        data.update(ssh_port="2222", environment=str(dr.pk))
        assert client.post(url, data).status_code == 302

        [changed] = events(AuditVerb.CHANGED)
        assert changed.changes == {"environment": ["prod", "dr"], "ssh_port": ["22", "2222"]}
        assert changed.message == (
            "'alice' from 127.0.0.1 changed server db1.example.test: "
            "environment: 'prod' → 'dr'; ssh_port: '22' → '2222'"
        )

    def test_it_records_an_instance_edit(self):
        client = client_for(user_in("dba", "alice"))
        _herd, primary, replica = herd_with_replicas()
        url = reverse("admin:instances_instance_change", args=[replica.pk])
        data = page_form_data(client.get(url))
        data.update(needs_rebuild="on", notes="disk replaced")

        assert client.post(url, data).status_code == 302

        [changed] = events(AuditVerb.CHANGED)
        assert changed.object_type == "instances.instance"
        assert changed.changes == {
            "needs_rebuild": ["False", "True"],
            "notes": ["", "disk replaced"],
        }

    def test_it_records_dr_candidates_added_changed_and_withdrawn_on_the_herd_page(self):
        client = client_for(user_in("dba", "alice"))
        herd, _primary, replica = herd_with_replicas()
        url = reverse("admin:herds_herd_change", args=[herd.pk])
        data = page_form_data(client.get(url))
        prefix = "dr_candidates"
        data.update(
            {
                f"{prefix}-TOTAL_FORMS": "1",
                f"{prefix}-0-instance": str(replica.pk),
                f"{prefix}-0-priority": "1",
                f"{prefix}-0-note": "",
            }
        )
        assert client.post(url, data).status_code == 302
        candidate = DRCandidate.objects.get()

        data = page_form_data(client.get(url))
        data[f"{prefix}-0-priority"] = "2"
        assert client.post(url, data).status_code == 302
        data[f"{prefix}-0-DELETE"] = "on"
        assert client.post(url, data).status_code == 302

        assert not DRCandidate.objects.exists()
        added, changed, deleted = events()
        assert [e.verb for e in (added, changed, deleted)] == ["added", "changed", "deleted"]
        assert all(e.object_type == "herds.drcandidate" for e in (added, changed, deleted))
        assert added.object_id == changed.object_id == str(candidate.pk)
        assert added.changes["instance"] == [None, str(replica)]
        assert changed.changes == {"priority": ["1", "2"]}
        assert deleted.object_repr == f"DR candidate {replica} (priority 2)"

    def test_it_records_deletes_from_the_page_and_from_the_list_action(self):
        client = client_for(user_in("dba", "alice"))
        herd = make_herd("gone")
        first, second = make_server("a.example.test"), make_server("b.example.test")

        url = reverse("admin:herds_herd_delete", args=[herd.pk])
        assert client.post(url, {"post": "yes"}).status_code == 302
        response = client.post(
            reverse("admin:instances_server_changelist"),
            {"action": "delete_selected", "_selected_action": [first.pk, second.pk], "post": "yes"},
        )
        assert response.status_code == 302

        assert not Server.objects.exists()
        deleted = events(AuditVerb.DELETED)
        assert [(e.object_type, e.object_id, e.object_repr) for e in deleted] == [
            ("herds.herd", str(herd.pk), "gone"),
            ("instances.server", str(first.pk), "a.example.test"),
            ("instances.server", str(second.pk), "b.example.test"),
        ]
        assert deleted[0].object_url == ""  # nothing left to link to

    def test_it_audits_every_inventory_admin(self):
        from django.contrib import admin

        for model in (Environment, Herd, Server, Instance):
            assert isinstance(admin.site._registry[model], AuditedActionsMixin), model


@pytest.mark.lab
@pytest.mark.django_db
class TestHostKeyPins:
    def test_it_records_a_re_pin_with_old_and_new_fingerprints(self, lab_servers):
        real, other = lab_servers[0], lab_servers[1]
        server = make_server(
            hostname=real.hostname,
            ssh_port=real.ssh_port,
            ssh_user=real.ssh_user,
            host_key_type=other.host_key_type,
            host_key=other.host_key,
            host_key_fingerprint=other.host_key_fingerprint,
        )
        client = client_for(user_in("dba", "alice"))
        url = reverse("admin:instances_server_pin_host_key", args=[server.pk])
        form = client.post(url, {}).context["form"]
        carried = {
            name: form[name].value()
            for name in ("host_key_type", "host_key", "host_key_fingerprint", "key_source")
        }

        assert client.post(url, {**carried, "fingerprint_checked": "on"}).status_code == 302

        [pinned] = events(AuditVerb.HOST_KEY_PINNED)
        assert (pinned.username, pinned.remote) == ("alice", "127.0.0.1")
        assert pinned.object_id == str(server.pk)
        assert pinned.changes == {
            "host_key_fingerprint": [other.host_key_fingerprint, real.host_key_fingerprint]
        }
        assert pinned.message.endswith(
            f"{other.host_key_fingerprint} → {real.host_key_fingerprint}"
        )

    def test_it_records_the_pin_of_a_server_added_in_the_admin(self, lab_servers):
        real = lab_servers[1]
        client = client_for(user_in("dba", "alice"))
        env = make_environment("prod")
        data = {
            "hostname": real.hostname,
            "environment": str(env.pk),
            "ssh_port": str(real.ssh_port),
            "ssh_user": real.ssh_user,
            "notes": "",
        }
        url = reverse("admin:instances_server_add")
        form = client.post(url, data).context["adminform"].form
        carried = {
            name: form[name].value()
            for name in ("host_key_type", "host_key", "host_key_fingerprint", "key_source")
        }

        assert client.post(url, {**data, **carried, "fingerprint_checked": "on"}).status_code == 302

        [added] = events(AuditVerb.ADDED)
        assert added.changes["hostname"] == [None, real.hostname]
        assert added.changes["host_key_fingerprint"] == [None, real.host_key_fingerprint]
        [pinned] = events(AuditVerb.HOST_KEY_PINNED)
        assert pinned.changes == {"host_key_fingerprint": [None, real.host_key_fingerprint]}
        assert (pinned.username, pinned.remote) == ("alice", "127.0.0.1")

    def test_it_records_a_server_added_by_the_management_command(self, lab_servers):
        from django.core.management import call_command

        real = lab_servers[2]
        call_command(
            "add_server",
            real.hostname,
            environment="prod",
            port=real.ssh_port,
            fingerprint=real.host_key_fingerprint,
            stdout=io.StringIO(),
        )

        added, pinned = events()
        assert (added.verb, pinned.verb) == (AuditVerb.ADDED, AuditVerb.HOST_KEY_PINNED)
        assert {(e.username, e.remote) for e in (added, pinned)} == {
            ("(management command)", "cli")
        }


# --- retention --------------------------------------------------------------------------------


def aged(days: float, n: int = 1) -> None:
    at = timezone.now() - timedelta(days=days)
    AuditEvent.objects.bulk_create(
        AuditEvent(at=at, verb=AuditVerb.JOB_QUEUED, username="old", message=f"{days} days")
        for _ in range(n)
    )


@pytest.mark.django_db
class TestRetention:
    @override_settings(AUDIT_RETENTION_DAYS=30)
    def test_it_prunes_only_what_is_older_than_the_retention(self, audit_log):
        aged(31, 3)
        aged(29, 2)

        assert prune_audit_events.apply().get() == 3

        assert sorted(e.message for e in events()) == ["29 days", "29 days"]
        assert "pruned 3 audit event(s) older than 30 day(s)" in audit_lines(audit_log)

    @override_settings(AUDIT_RETENTION_DAYS=30)
    def test_it_prunes_batch_after_batch(self, monkeypatch):
        monkeypatch.setattr(audit, "PRUNE_BATCH", 4)
        aged(40, 9)

        assert audit.prune() == 9
        assert events() == []

    @override_settings(AUDIT_RETENTION_DAYS=0)
    def test_it_keeps_everything_with_a_retention_of_zero(self):
        aged(4000)
        assert audit.prune() == 0
        assert len(events()) == 1

    def test_it_is_scheduled_by_beat(self):
        entry = settings.CELERY_BEAT_SCHEDULE["prune-audit-events"]
        assert entry["task"] == prune_audit_events.name == "instances.prune_audit_events"
        assert entry["schedule"] == settings.AUDIT_PRUNE_INTERVAL


# --- the admin list ---------------------------------------------------------------------------


def many_events(n: int) -> None:
    server = make_server()
    job = Job.objects.create(kind=JobKind.DISCOVER, server=server)
    kinds = [
        (AuditVerb.LOGIN, "auth.user", "1", "alice"),
        (AuditVerb.CHANGED, "instances.server", str(server.pk), server.hostname),
        (AuditVerb.JOB_QUEUED, "instances.job", str(job.pk), str(job)),
        (AuditVerb.DELETED, "herds.herd", "9", "gone"),
        (AuditVerb.ACTION_REFUSED, "instances.job", "", ""),
    ]
    AuditEvent.objects.bulk_create(
        AuditEvent(
            verb=verb,
            username=f"user{i % 7}",
            remote=f"10.0.0.{i % 250}",
            object_type=kind,
            object_id=pk,
            object_repr=name,
            message=f"event {i}",
            changes={"port": ["1", "2"]} if verb == AuditVerb.CHANGED else {},
        )
        for i, (verb, kind, pk, name) in ((i, kinds[i % len(kinds)]) for i in range(n))
    )


def queries_for(client: Client, url: str) -> int:
    client.get(url)  # warm caches (content types, session) out of the measurement
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


@pytest.mark.django_db
class TestAuditList:
    def test_it_sets_the_list_options(self):
        for option in ("list_display", "list_filter", "search_fields", "list_select_related"):
            assert option in vars(AuditEventAdmin), option

    def test_it_costs_the_same_queries_for_ten_or_a_thousand_events(self):
        client = client_for(user_in("viewer", "victor"))
        many_events(10)
        ten = queries_for(client, AUDIT_URL)

        many_events(990)
        thousand = queries_for(client, AUDIT_URL)

        assert AuditEvent.objects.filter(message__startswith="event ").count() == 1000
        assert ten == thousand
        filtered = f"{AUDIT_URL}?verb=changed&object_type=instances.server&q=event"
        assert queries_for(client, filtered) == ten

    def test_every_role_may_read_it_and_nobody_may_change_it(self):
        many_events(5)
        event = AuditEvent.objects.first()
        for role in ("viewer", "operator", "dba"):
            client = client_for(user_in(role))
            response = client.get(AUDIT_URL)
            assert response.status_code == 200, role
            assert response.context["action_form"] is None, role
            change_url = reverse("admin:instances_auditevent_change", args=[event.pk])
            page = client.get(change_url)
            assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
            assert client.post(change_url, {"message": "rewritten"}).status_code == 403
            assert client.get(reverse("admin:instances_auditevent_add")).status_code == 403
            delete_url = reverse("admin:instances_auditevent_delete", args=[event.pk])
            assert client.post(delete_url, {"post": "yes"}).status_code == 403
        superuser = User.objects.create_superuser("root", password="unused")
        client = client_for(superuser)
        assert client.get(reverse("admin:instances_auditevent_add")).status_code == 403
        assert AuditEvent.objects.filter(pk=event.pk, message=event.message).exists()

    def test_it_filters_and_searches(self):
        client = client_for(user_in("viewer", "victor"))
        many_events(50)

        def shown(query: str) -> list[AuditEvent]:
            return list(client.get(f"{AUDIT_URL}?{query}").context["cl"].result_list)

        assert {e.verb for e in shown("verb=login")} == {"login"}
        assert {e.object_type for e in shown("object_type=instances.job")} == {"instances.job"}
        assert {(e.username, e.verb) for e in shown("username=victor")} == {("victor", "login")}
        assert {e.username for e in shown("q=user3")} == {"user3"}
        assert [e.message for e in shown("q=event+42")] == ["event 42"]
        assert len(shown("at__gte=2000-01-01+00:00:00%2B00:00")) == AuditEvent.objects.count()
        assert shown("at__gte=2999-01-01+00:00:00%2B00:00") == []
        page = client.get(AUDIT_URL).content.decode()
        server = Server.objects.get()
        assert reverse("admin:instances_server_change", args=[server.pk]) in page
