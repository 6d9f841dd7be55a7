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


def _plans(queryset: QuerySet[Herd], kind: str, params: dict) -> list[tuple]:
    return live.plans(list(queryset.select_related("environment")), kind, params)


def drill_action(kind: str, title: str, what_happens: str, form_class=None):
    def action(modeladmin, request: HttpRequest, queryset: QuerySet[Herd]):
        accept = request.POST.get("accept_data_loss") == "on"
        skip = request.POST.get("skip_salvage") == "on"
        plans = _plans(queryset, kind, {"accept_data_loss": accept, "skip_salvage": skip})
        return confirm_and_queue(
            modeladmin,
            request,
            [herd for herd, _, _ in plans],
            kind=kind,
            title=title,
            what_happens=what_happens,
            form_class=form_class,
            params_for=snapshot.expected_primary,
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
