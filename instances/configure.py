"""Change a setting: ALTER SYSTEM SET on one instance, reload, and say whether it took
effect or waits for a restart; the old value is recorded so that undo is the same change
with it.

Checked again live before anything changes (instances.settings_planning.check against the
instance's own pg_settings): a bad name or value is refused, changing nothing.
"""

from __future__ import annotations

import logging
import time

from instances import probe, settings_gather
from instances.choices import JobKind
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext, db_retry
from instances.models import Instance, Job
from instances.settings_planning import check, check_name

log = logging.getLogger("elephaas.settings")


def read(instance: Instance, name: str):
    try:
        return probe.setting(instance.server.hostname, instance.port, name)
    except probe.ProbeError as exc:
        raise JobFailed(f"{instance.label} does not answer ({exc}): nothing changed") from None


@operation(JobKind.SET_PARAMETER)
def set_parameter(ctx: JobContext) -> str:
    """1. the parameter's pg_settings row, live; check the value (refuse: nothing changed);
    2. ALTER SYSTEM SET and pg_reload_conf(); the old value is kept in the job's params;
    3. read it back: in effect, or pending a restart."""
    instance = ctx.job.instance
    params = ctx.job.params
    try:
        name = check_name(str(params.get("name", "")))
    except ValueError as exc:
        raise JobFailed(f"{exc}: nothing changed") from None
    value = str(params.get("value", ""))
    found = read(instance, name)
    row, _pending, before = found if found else (None, False, "")
    verdict = check(row, name, value)
    ctx.note(
        "check against its pg_settings",
        f"{name} is {before or '—'} now; {verdict.reason}" if row else verdict.reason,
    )
    if not verdict.ok:
        raise JobFailed(f"{instance.label}: {verdict.reason}: nothing changed")
    with ctx.step(
        f"ALTER SYSTEM SET {name} = {verdict.value!r}; pg_reload_conf()", instance.server.hostname
    ) as step:
        try:
            probe.alter_system(instance.server.hostname, instance.port, name, verdict.value)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{instance.label}: PostgreSQL refused it ({exc}): nothing changed"
            ) from None
        step.output = f"was {before}"
    db_retry(
        lambda: Job.objects.filter(pk=ctx.job.pk).update(
            params={**params, "name": name, "previous": before}
        ),
        "recording the old value",
    )
    # The reload is asynchronous: wait briefly until it shows (or is pending).
    deadline = time.monotonic() + 3
    while True:
        try:
            _now, pending, shown = read(instance, name) or (None, False, "")
        except JobFailed as exc:
            raise JobFailed(
                f"{instance.label}: {name} = {verdict.value!r} was written (ALTER SYSTEM, "
                f"reloaded; it was {before}), then it stopped answering: check it"
            ) from exc
        if pending or shown != before or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    ctx.note("read it back", f"{name} = {shown}" + ("; pending a restart" if pending else ""))
    # The instance page and the fleet-wide search show the new value now, not at the
    # next gathering; a failure here is only a stale page, never a failed change.
    try:
        settings_gather.gather([instance])
    except Exception:  # noqa: BLE001
        log.exception("gathering the settings of %s after a change", instance.pk)
    if pending:
        Instance.objects.filter(pk=instance.pk).update(
            pending_restart=",".join(
                sorted({*filter(None, instance.pending_restart.split(",")), name})
            )[:500]
        )
        return (
            f"{instance.label}: {name} {before} → {verdict.value}: written, takes effect at "
            "the next restart (pending restart)"
        )
    if shown == before:
        return f"{instance.label}: {name} stays {shown} (it already had that value)"
    return f"{instance.label}: {name} {before} → {shown}: in effect after a reload"
