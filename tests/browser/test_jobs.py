"""An operator restarts two replicas from the instance list and watches the job page
refresh itself until the real worker has restarted them."""

from __future__ import annotations

import psycopg2
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from instances.choices import AuditVerb, JobKind, JobState, Role
from instances.models import AuditEvent, Instance, Job
from tests.browser.conftest import PORT
from tests.helpers import wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def job_state(page) -> str:
    return page.text(".field-state_colour .readonly")


def test_an_operator_restarts_two_replicas_and_watches_them_succeed(
    page, browse, celery_worker, lab
):
    replicas = list(
        Instance.objects.filter(herd=browse, role=Role.REPLICA).select_related("server")
    )
    assert len(replicas) == 2
    held, other = replicas
    # A client stays connected to one replica: its smart restart waits for it to leave,
    # so the job is seen running, and its page refreshing, for as long as the test likes.
    client = psycopg2.connect(
        host=held.server.hostname,
        port=PORT,
        dbname="postgres",
        user="elephaas",
        password=lab.secret("pg_password"),
        connect_timeout=3,
    )
    try:
        page.log_in("oscar")
        page.open(f"/admin/instances/instance/?herd__id__exact={browse.pk}")
        for replica in replicas:
            page.find(f"input.action-select[value='{replica.pk}']").click()
        Select(page.find("select[name=action]")).select_by_value("restart_instances")
        page.shot("two replicas ticked")
        page.find("button[name=index]").click()

        page.wait_for(lambda: page.find_all("#confirm-jobs"), "the confirmation page")
        confirmation = page.text("#content")
        assert held.server.hostname in confirmation and other.server.hostname in confirmation
        page.find("#confirm-jobs input[name=mode][value=smart]").click()
        page.shot("confirmation")
        page.find("#confirm-jobs [type=submit]").click()

        page.wait_for(lambda: page.find_all(".messagelist .success"), "the jobs queued")
        assert "2 job(s) queued" in page.text(".messagelist")
        page.driver.find_element(By.LINK_TEXT, "follow the batch").click()
        page.wait_for(lambda: "batch=" in page.path(), "the batch page")
        page.shot("batch")
        held_job = Job.objects.get(kind=JobKind.RESTART, instance=held)
        other_job = wait_for_job(Job.objects.get(kind=JobKind.RESTART, instance=other), timeout=90)
        assert other_job.state == JobState.SUCCEEDED, other_job.error

        page.open(held_job.get_absolute_url())
        assert job_state(page) in ("queued", "running")
        assert page.find_all("meta[http-equiv=refresh]")
        page.mark()
        page.shot("job running")
    finally:
        client.close()

    # Nothing but the page's own refresh shows the end.
    page.wait_for(lambda: page.reloaded() and job_state(page) == "succeeded", "success", 90)
    page.shot("job succeeded")
    assert not page.find_all("meta[http-equiv=refresh]")
    assert "restarted: accepting connections as a replica" in page.text(".field-summary_pre")

    for job in Job.objects.filter(kind=JobKind.RESTART):
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.requested_by_name == "oscar"
        # Run by the test session's worker process, not in this one.
        assert job.worker.endswith(f":{celery_worker['pid']}")
    queued = AuditEvent.objects.filter(verb=AuditVerb.JOB_QUEUED, username="oscar")
    assert queued.count() == 2 and {e.remote for e in queued} == {"127.0.0.1"}
