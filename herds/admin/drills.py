"""Switchover and failover admin actions: the plan for each herd, then one job per herd.

The confirmation page plans from a live probe of every member (herds.live: bounded by
CONFIRM_PROBE_TIMEOUT, each member marked "live" or "last seen N s ago"); the job plans
again from its own live snapshot before it touches anything, and refuses if the herd's
primary is no longer the one shown here.
"""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet
from django.http import HttpRequest

from herds import live, snapshot
from herds.models import Herd
from instances.admin.action_forms import ActionOptionsForm
from instances.admin.actions import confirm_and_queue
from instances.choices import JobKind


class FailoverOptionsForm(ActionOptionsForm):
    accept_data_loss = forms.BooleanField(
        required=False,
        label="Accept data loss",
        help_text="Fail over even if the best replica may be further behind the old primary "
        "than the configured limit (ELEPHAAS_FAILOVER_MAX_LOSS_BYTES).",
    )
    skip_salvage = forms.BooleanField(
        required=False,
        label="Skip the WAL salvage",
        help_text="By default, when the old primary's server still answers SSH, the WAL the "
        "chosen replica lacks is copied from the old primary's pg_wal and replayed before "
        "the promotion (0 bytes lost). Tick to promote without it (faster; the loss rules "
        "apply).",
    )


def drill_action(kind: str, title: str, what_happens: str, form_class=None):
    def action(modeladmin, request: HttpRequest, queryset: QuerySet[Herd]):
        accept = request.POST.get("accept_data_loss") == "on"
        skip = request.POST.get("skip_salvage") == "on"
        herds = list(queryset.select_related("environment"))
        # The DBA's target per herd (a select on the page, defaulting to the plan's pick);
        # the job promotes exactly it or refuses, so a forged id only gets a refusal.
        chosen = {}
        for herd in herds:
            raw = request.POST.get(f"target_{herd.pk}", "")
            if raw.isdigit():
                chosen[herd.pk] = int(raw)
        plans = live.plans(herds, kind, {"accept_data_loss": accept, "skip_salvage": skip}, chosen)
        picked = {
            herd.pk: chosen.get(herd.pk, plan.candidate.id if plan.candidate else None)
            for herd, plan, _, _ in plans
        }

        def params_for(herd: Herd) -> dict:
            return {**snapshot.expected_primary(herd), "target_id": picked.get(herd.pk)}

        return confirm_and_queue(
            modeladmin,
            request,
            herds,
            kind=kind,
            title=title,
            what_happens=what_happens,
            form_class=form_class,
            params_for=params_for,
            template="admin/herds/confirm_drill.html",
            extra_context={"plans": plans},
        )

    return action


switchover_action = drill_action(
    JobKind.SWITCHOVER,
    "Planned switchover",
    "For each herd: stop its primary cleanly, wait until the chosen replica has replayed "
    "everything up to the primary's final checkpoint, promote it, move DNS, point the other "
    "replicas at it, and turn the old primary into its replica. No committed transaction is "
    "lost. Herds run in parallel; each is locked while its switchover runs.",
)

failover_action = drill_action(
    JobKind.FAILOVER,
    "DR failover",
    "For each herd whose primary is down or unreachable: promote the most up-to-date replica "
    "(ties: acknowledged DR candidate, then priority). Where the old primary's server still "
    "answers SSH, its true end of WAL is read and the WAL the replica lacks is copied from "
    "its pg_wal and replayed first (salvage: 0 bytes lost). Then fence the old primary, move "
    "DNS and point the other replicas at it. The old primary is marked as needing a "
    "rebuild. Each job plans again from a live check before it changes anything.",
    FailoverOptionsForm,
)
