"""A DBA switches a herd over from the herds list: the confirmation page with its live
plan and target, the job run by the real worker, the herd page showing the new primary."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from herds.models import Drill
from instances.choices import AuditVerb, JobKind, JobState, Role
from instances.models import AuditEvent, Instance, Job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]


def inline_roles(page) -> dict[str, str]:
    """The herd page's instance rows: server → role."""
    roles = {}
    for row in page.find_all("tr.has_original"):
        cells = {
            cell.get_attribute("class").split()[0]: cell.text
            for cell in row.find_elements(By.CSS_SELECTOR, "td[class^=field-]")
        }
        if "field-server" in cells:
            roles[cells["field-server"].strip()] = cells.get("field-role", "").strip()
    return roles


def test_a_dba_switches_a_herd_over_and_sees_the_new_primary(page, browse, celery_worker):
    old = Instance.objects.select_related("server").get(herd=browse, role=Role.PRIMARY)
    new = (
        Instance.objects.select_related("server")
        .filter(herd=browse, role=Role.REPLICA)
        .order_by("server__hostname")
        .first()
    )
    page.log_in("alice")
    page.open("/admin/herds/herd/")
    page.find(f"input.action-select[value='{browse.pk}']").click()
    Select(page.find("select[name=action]")).select_by_value("switchover_herds")
    page.find("button[name=index]").click()

    page.wait_for(lambda: page.find_all("#confirm-jobs"), "the confirmation page", 30)
    target = Select(page.find(f"#target_{browse.pk}"))
    target.select_by_value(str(new.pk))
    page.shot("confirmation with the plan")
    assert "live" in page.text("#content")
    page.find("#confirm-jobs [type=submit]").click()

    page.wait_for(lambda: page.find_all(".messagelist .success"), "the switchover queued")
    job = Job.objects.get(kind=JobKind.SWITCHOVER)
    page.open(job.get_absolute_url())
    page.mark()
    page.wait_for(
        lambda: page.text(".field-state_colour .readonly") in ("succeeded", "failed", "errored"),
        "the switchover to end",
        180,
    )
    page.shot("switchover ended")
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.worker.endswith(f":{celery_worker['pid']}")
    assert page.reloaded()  # the page refreshed itself to show the end

    page.open(f"/admin/herds/herd/{browse.pk}/change/")
    roles = inline_roles(page)
    page.driver.execute_script("arguments[0].scrollIntoView()", page.find("tr.has_original"))
    page.shot("herd page after the switchover")
    assert roles[new.server.hostname] == Role.PRIMARY
    assert roles[old.server.hostname] == Role.REPLICA
    assert new.server.hostname in page.text("#herd-endpoints")

    # The topology picture follows: `new` drawn as the primary, an edge from it to `old`,
    # and no edge left from `old`.
    picture = page.find("#herd-topology svg.herd-topology")
    page.driver.execute_script("arguments[0].scrollIntoView()", picture)
    page.shot("herd topology after the switchover")
    node = picture.find_element(By.CSS_SELECTOR, f'g.node[data-key="{new.pk}"]')
    assert "PRIMARY" in node.text and new.server.hostname in node.text
    # The promotion's new timeline, recorded by the job itself (no sweep ran here).
    new.refresh_from_db()
    assert new.timeline and new.timeline >= 2 and f"timeline {new.timeline}" in node.text
    edge = picture.find_elements(
        By.CSS_SELECTOR, f'g.edge[data-source="{new.pk}"][data-target="{old.pk}"]'
    )
    assert len(edge) == 1, picture.get_attribute("outerHTML")[:2000]
    # Streaming once a health sweep or the job has seen it; never broken or misdirected.
    kind = edge[0].get_attribute("class").split("edge-")[-1]
    assert kind in ("streaming", "lagging", "unknown"), kind
    assert not picture.find_elements(By.CSS_SELECTOR, f'g.edge[data-source="{old.pk}"]')

    drill = Drill.objects.get(job=job)
    assert drill.new_primary == new.label and drill.outcome == "completed"
    trail = AuditEvent.objects.filter(object_type="instances.job", object_id=str(job.pk))
    verbs = set(trail.values_list("verb", flat=True))
    assert verbs == {AuditVerb.DRILL_QUEUED, AuditVerb.DRILL_ENDED}
