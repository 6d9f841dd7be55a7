"""Switchover and failover jobs: take a live snapshot, plan, then carry the plan out.

Each job holds the herd's lock for its whole run (jobs.lock_keys), re-checks that the
herd still has the primary the DBA confirmed (so two DBAs clicking at once fail one herd
over exactly once), and writes a Drill row an auditor can read: start, moment the new
primary accepted writes, DNS cut-over, data lost.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

from django.conf import settings
from django.utils import timezone

from herds import planning
from herds.models import Drill, DrillKind, Herd
from instances import discovery, lifecycle, probe
from instances.choices import Role
from instances.jobs import JobCancelled, JobContext, JobFailed, operation
from instances.models import Instance, JobKind

# Removes any primary_conninfo line from postgresql.auto.conf, then appends ours, and marks
# the data directory as a standby. Values arrive as positional arguments.
STANDBY_CONFIG = r"""
set -e
auto="$1/postgresql.auto.conf"
touch "$auto"
grep -v '^[[:space:]]*primary_conninfo[[:space:]]*=' "$auto" > "$auto.elephaas" || true
printf '%s\n' "$2" >> "$auto.elephaas"
mv "$auto.elephaas" "$auto"
touch "$1/standby.signal"
"""
CHECKPOINT_RE = re.compile(r"^Latest checkpoint location:\s+([0-9A-F]+/[0-9A-F]+)", re.M)
STATE_RE = re.compile(r"^Database cluster state:\s+(.+)$", re.M)


def herd_instances(herd: Herd) -> list[Instance]:
    return list(
        Instance.objects.select_related("server", "herd", "dr_candidacy")
        .filter(herd=herd)
        .order_by("pk")
    )


def recorded_primary(instances: list[Instance]) -> Instance | None:
    primaries = [i for i in instances if i.role == Role.PRIMARY and not i.fenced]
    primaries.sort(key=lambda i: (i.online is not True, i.pk))
    return primaries[0] if primaries else None


def _member(instance: Instance, result: probe.ProbeResult | None, *, live: bool) -> planning.Member:
    candidacy = getattr(instance, "dr_candidacy", None)
    common = dict(
        id=instance.pk,
        label=lifecycle.where(instance),
        hostname=instance.server.hostname,
        fenced=instance.fenced,
        dr_candidate=candidacy is not None,
        priority=candidacy.priority if candidacy is not None else 1000,
    )
    if live:
        if result is None:
            return planning.Member(answering=False, **common)
        return planning.Member(
            answering=True,
            in_recovery=result.in_recovery,
            current_lsn=None if result.in_recovery else planning.lsn_to_int(result.lsn),
            receive_lsn=planning.lsn_to_int(result.receive_lsn),
            replay_lsn=planning.lsn_to_int(result.replay_lsn),
            **common,
        )
    # From the inventory, for confirmation pages: what the last check recorded.
    is_replica = instance.role == Role.REPLICA
    return planning.Member(
        answering=bool(instance.online),
        in_recovery=is_replica if instance.online else None,
        current_lsn=None if is_replica else planning.lsn_to_int(instance.last_lsn),
        receive_lsn=planning.lsn_to_int(instance.receive_lsn or instance.last_lsn)
        if is_replica
        else None,
        replay_lsn=planning.lsn_to_int(instance.replay_lsn or instance.last_lsn)
        if is_replica
        else None,
        **common,
    )


def snapshot(herd: Herd, *, live: bool) -> tuple[planning.Snapshot, dict[int, Instance]]:
    instances = herd_instances(herd)
    primary = recorded_primary(instances)
    results: dict[int, probe.ProbeResult | None] = {}
    if live:

        def ask(instance: Instance):
            try:
                return instance.pk, probe.probe(instance.server.hostname, instance.port)
            except probe.ProbeError:
                return instance.pk, None

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(instances)))) as pool:
            results = dict(pool.map(ask, instances))
    members = {i.pk: _member(i, results.get(i.pk), live=live) for i in instances}
    snap = planning.Snapshot(
        herd=herd.name,
        primary=members[primary.pk] if primary else None,
        replicas=tuple(
            members[i.pk]
            for i in instances
            if (primary is None or i.pk != primary.pk) and i.role != Role.PRIMARY
        ),
        vhost=herd.vhost,
        last_known_primary_lsn=planning.lsn_to_int(primary.last_lsn) if primary else None,
    )
    return snap, {i.pk: i for i in instances}


def plan_for(herd: Herd, kind: str, params: dict, *, live: bool) -> planning.Plan:
    snap, _ = snapshot(herd, live=live)
    if kind == DrillKind.SWITCHOVER:
        return planning.plan_switchover(snap, params.get("target_id"))
    return planning.plan_failover(
        snap,
        max_loss_bytes=settings.FAILOVER_MAX_LOSS_BYTES,
        accept_loss=bool(params.get("accept_data_loss")),
    )


# --- shared steps -------------------------------------------------------------------------


def _conninfo_value(value: str) -> str:
    """A libpq conninfo value: bare when safe, else single-quoted with backslash escapes."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo_for(upstream: Instance, replica: Instance, template: str = "") -> str:
    """primary_conninfo for `replica` streaming from `upstream`: the user (and any other
    options) of its current conninfo, a new host and port, no password (.pgpass has it)."""
    options = discovery.parse_conninfo(template) if template else {}
    for secret in ("password", "passfile"):
        options.pop(secret, None)
    options["host"] = upstream.server.hostname
    options["port"] = str(upstream.port)
    options.setdefault("user", settings.REPLICATION_USER)
    options["application_name"] = re.sub(
        r"[^A-Za-z0-9_]", "_", f"{replica.herd.name}_{replica.server.hostname}"
    )
    return " ".join(f"{key}={_conninfo_value(value)}" for key, value in options.items())


def wait_writable(ctx: JobContext, instance: Instance) -> str:
    started = time.monotonic()
    with ctx.step("check it accepts writes", f"{instance.server.hostname}:{instance.port}") as step:
        while True:
            ctx.check_cancel()
            try:
                lsn = probe.check_writable(instance.server.hostname, instance.port)
                step.output = f"wrote a transaction; WAL at {lsn}"
                return lsn
            except probe.ProbeError as exc:
                if time.monotonic() - started > settings.ACTION_WAIT:
                    raise JobFailed(
                        f"{lifecycle.where(instance)} was promoted but does not "
                        f"accept writes: {exc}"
                    ) from None
            time.sleep(0.05)


def move_dns(ctx: JobContext, herd: Herd, new_primary: Instance, drill: Drill) -> str:
    """Point the vhost at the new primary; a DNS failure does not undo the database switch,
    it is recorded and reported (Refresh DNS re-applies it)."""
    if not herd.vhost:
        ctx.note("DNS", "the herd has no vhost: nothing to update")
        return ""
    from herds import dns

    with ctx.step(
        f"point {herd.vhost} at {new_primary.server.hostname}", settings.DNS_SERVER
    ) as step:
        try:
            result = dns.point_vhost(herd.vhost, new_primary.server.hostname)
        except dns.DNSError as exc:
            step.ok = False
            step.output = str(exc)
            drill.dns_ok = False
            drill.save(update_fields=["dns_ok"])
            return f"DNS not updated ({exc}): fix it, then run Refresh DNS on {herd.name}"
        step.output = result.describe()
    drill.dns_at, drill.dns_ok = timezone.now(), True
    drill.save(update_fields=["dns_at", "dns_ok"])
    return ""


def repoint(ctx: JobContext, replica: Instance, upstream: Instance) -> None:
    where = lifecycle.where(replica)
    with ctx.step(
        f"point {where} at {lifecycle.where(upstream)}", f"{replica.server.hostname}:{replica.port}"
    ) as step:
        try:
            current = probe.probe(replica.server.hostname, replica.port)
            conninfo = conninfo_for(upstream, replica, current.primary_conninfo)
            probe.set_primary_conninfo(replica.server.hostname, replica.port, conninfo)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{where}: could not repoint it ({exc}); its upstream is still the "
                "old primary: remaster it once it answers"
            ) from None
        step.output = f"primary_conninfo = {conninfo}"
    wait_streaming(ctx, replica, upstream)
    Instance.objects.filter(pk=replica.pk).update(
        upstream=upstream, role=Role.REPLICA, streams_from=f"{upstream.address}"
    )


def wait_streaming(ctx: JobContext, replica: Instance, upstream: Instance) -> None:
    started = time.monotonic()
    with ctx.step(
        f"wait until {lifecycle.where(replica)} streams from the new primary",
        f"{replica.server.hostname}:{replica.port}",
    ) as step:
        while True:
            ctx.check_cancel()
            try:
                receiver = probe.wal_receiver(replica.server.hostname, replica.port)
            except probe.ProbeError:
                receiver = None
            if (
                receiver
                and receiver[0] == "streaming"
                and receiver[1] == upstream.server.hostname
                and receiver[2] == upstream.port
            ):
                step.output = f"streaming after {time.monotonic() - started:.1f} s"
                return
            if time.monotonic() - started > settings.ACTION_WAIT:
                raise JobFailed(
                    f"{lifecycle.where(replica)} is not streaming from "
                    f"{lifecycle.where(upstream)} after {settings.ACTION_WAIT:.0f} s "
                    f"(receiver: {receiver}); check its log"
                )
            time.sleep(0.1)


def bindir(instance: Instance) -> str:
    return settings.PG_BINDIR.replace("{version}", str(instance.effective_pg_version))


def final_checkpoint(ctx: JobContext, instance: Instance) -> int:
    result = ctx.ssh(
        instance.server,
        [
            "env",
            "LC_ALL=C",
            f"{bindir(instance)}/pg_controldata",
            "-D",
            instance.effective_data_dir,
        ],
        "read the final checkpoint (pg_controldata)",
    )
    state = STATE_RE.search(result.stdout)
    if not state or state.group(1).strip() != "shut down":
        raise JobFailed(
            f"{lifecycle.where(instance)} did not shut down cleanly "
            f"(cluster state: {state.group(1) if state else 'unknown'})"
        )
    found = CHECKPOINT_RE.search(result.stdout)
    if not found:
        raise JobFailed(f"{lifecycle.where(instance)}: no checkpoint location in pg_controldata")
    return planning.lsn_to_int(found.group(1))


def rejoin_as_replica(ctx: JobContext, old: Instance, new_primary: Instance, template: str) -> None:
    """Turn a cleanly stopped old primary into a replica of the new primary: pg_rewind
    (a no-op when nothing diverged), standby.signal and primary_conninfo, start."""
    # pg_rewind reads the source's timeline from its control file, which a promoted server
    # updates only at its first checkpoint: without one it would see the old timeline and
    # rewind to the wrong common ancestor.
    with ctx.step(
        "checkpoint the new primary (records its new timeline for pg_rewind)",
        f"{new_primary.server.hostname}:{new_primary.port}",
    ):
        try:
            probe.checkpoint(new_primary.server.hostname, new_primary.port)
        except probe.ProbeError as exc:
            raise JobFailed(
                f"{lifecycle.where(new_primary)}: CHECKPOINT failed ({exc}); "
                f"{lifecycle.where(old)} is stopped: rejoin it later"
            ) from None
    source = (
        f"host={new_primary.server.hostname} port={new_primary.port} "
        f"user={settings.PG_PROBE_USER} dbname={settings.PG_PROBE_DATABASE}"
    )
    ctx.ssh(
        old.server,
        [
            "env",
            "LC_ALL=C",
            f"{bindir(old)}/pg_rewind",
            "--target-pgdata",
            old.effective_data_dir,
            "--source-server",
            source,
            "--progress",
        ],
        "pg_rewind onto the new primary",
        timeout=settings.ACTION_WAIT * 10,
    )
    conninfo = conninfo_for(new_primary, old, template)
    ctx.ssh(
        old.server,
        [
            "sh",
            "-c",
            STANDBY_CONFIG,
            "sh",
            old.effective_data_dir,
            f"primary_conninfo = '{conninfo.replace(chr(39), chr(39) * 2)}'",
        ],
        "configure as a standby of the new primary",
    )
    ctx.ssh(old.server, lifecycle.command_for("start", old), "start as a replica")
    wait_streaming(ctx, old, new_primary)
    Instance.objects.filter(pk=old.pk).update(
        role=Role.REPLICA,
        upstream=new_primary,
        online=True,
        streams_from=new_primary.address,
        state_changed_at=timezone.now(),
        needs_rebuild=False,
    )


def _begin(
    ctx: JobContext, kind: str
) -> tuple[Herd, planning.Plan, dict[int, Instance], Drill, Instance | None]:
    herd: Herd = ctx.job.herd
    params = ctx.job.params
    snap, instances = snapshot(herd, live=True)
    expected = params.get("expected_primary_id")
    current = snap.primary.id if snap.primary else None
    if expected is not None and expected != current:
        now = instances[current] if current else None
        raise JobFailed(
            f"{herd.name} changed since the confirmation: its primary is now "
            f"{lifecycle.where(now) if now else 'none'}; nothing done (another job may have "
            "switched it already): plan again"
        )
    if kind == DrillKind.SWITCHOVER:
        plan = planning.plan_switchover(snap, params.get("target_id"))
    else:
        plan = planning.plan_failover(
            snap,
            max_loss_bytes=settings.FAILOVER_MAX_LOSS_BYTES,
            accept_loss=bool(params.get("accept_data_loss")),
        )
    ctx.note("plan", "\n".join([plan.sentence, *plan.steps]))
    if not plan.ok:
        raise JobFailed(f"{herd.name}: {plan.sentence}")
    primary = instances.get(snap.primary.id) if snap.primary else None
    drill = Drill.objects.create(
        job=ctx.job,
        herd=herd,
        kind=kind,
        requested_by_name=ctx.job.requested_by_name,
        plan=plan.sentence,
        old_primary=lifecycle.where(primary) if primary else "",
        new_primary=plan.candidate.label,
        started_at=ctx.job.started_at or timezone.now(),
        last_known_lsn=planning.int_to_lsn(snap.last_known_primary_lsn)
        if snap.last_known_primary_lsn is not None
        else "",
    )
    return herd, plan, instances, drill, primary


def _finish(drill: Drill, outcome: str) -> None:
    drill.finished_at = timezone.now()
    drill.outcome = outcome[:500]
    drill.save(update_fields=["finished_at", "outcome"])


def _reason(exc: BaseException) -> str:
    return "cancelled by a user" if isinstance(exc, JobCancelled) else str(exc)


def _abort_before_promotion(
    ctx: JobContext, old: Instance, drill: Drill, exc: BaseException
) -> NoReturn:
    """Nothing was promoted: put the old primary back and say exactly what happened. Runs
    even after a cancel (its steps are not cancellable)."""
    reason = _reason(exc)
    try:
        ctx.ssh(
            old.server,
            lifecycle.command_for("start", old),
            "abort: restart the old primary",
            check=False,
            cancellable=False,
        )
        deadline = time.monotonic() + settings.ACTION_WAIT
        answer, error = lifecycle.try_probe(old)
        while answer is None and time.monotonic() < deadline:
            time.sleep(0.2)
            answer, error = lifecycle.try_probe(old)
    except JobFailed as start_failed:
        answer, error = None, str(start_failed)
    if answer is not None and not answer.in_recovery:
        lifecycle.record(old, answer)
        _finish(drill, f"aborted before promotion ({reason}); old primary restarted")
        raise JobFailed(
            f"switchover of {old.herd.name} aborted before promotion ({reason}); "
            f"the old primary {lifecycle.where(old)} was restarted, nothing promoted"
        )
    _finish(drill, f"aborted before promotion ({reason}); old primary NOT restarted")
    raise JobFailed(
        f"switchover of {old.herd.name} aborted before promotion ({reason}), and the "
        f"old primary {lifecycle.where(old)} could not be restarted ({error}): the "
        "herd has no primary; start it by hand"
    )


def _wait_replayed(ctx: JobContext, new: Instance, checkpoint: int) -> None:
    started = time.monotonic()
    with ctx.step(
        f"wait until {lifecycle.where(new)} replayed {planning.int_to_lsn(checkpoint)}",
        f"{new.server.hostname}:{new.port}",
    ) as step:
        while True:
            ctx.check_cancel()
            result, _ = lifecycle.try_probe(new)
            replayed = planning.lsn_to_int(result.replay_lsn) if result else None
            if replayed is not None and replayed > checkpoint:
                step.output = (
                    f"replayed {result.replay_lsn} after {time.monotonic() - started:.2f} s"
                )
                return
            if time.monotonic() - started > settings.ACTION_WAIT:
                raise JobFailed(
                    f"{lifecycle.where(new)} did not replay the old primary's final checkpoint "
                    f"{planning.int_to_lsn(checkpoint)} within {settings.ACTION_WAIT:.0f} s "
                    f"(at {result.replay_lsn if result else 'no answer'})"
                )
            time.sleep(0.02)


def _promote(
    ctx: JobContext,
    herd: Herd,
    new: Instance,
    drill: Drill,
    lost: int | None,
    promoted_lsn: str | None,
    stopped_note: str,
) -> str:
    """Promote and prove a write; record the moment (RTO). A failure here leaves the herd
    without a writable primary, so the error says which instance to check first."""
    try:
        ctx.ssh(new.server, lifecycle.command_for("promote", new), "promote")
        lsn = wait_writable(ctx, new)
    except (JobFailed, JobCancelled) as exc:
        _finish(drill, f"promotion failed: {_reason(exc)}")
        raise JobFailed(
            f"{herd.name}: promoting {lifecycle.where(new)} failed ({_reason(exc)}); "
            f"{stopped_note}; check whether {lifecycle.where(new)} left recovery before "
            "starting anything"
        ) from None
    drill.writable_at = timezone.now()
    drill.promoted_lsn, drill.data_lost_bytes = promoted_lsn or lsn, lost
    drill.save(update_fields=["writable_at", "promoted_lsn", "data_lost_bytes"])
    Instance.objects.filter(pk=new.pk).update(
        role=Role.PRIMARY,
        upstream=None,
        streams_from="",
        online=True,
        last_lsn=lsn,
        state_changed_at=timezone.now(),
    )
    return lsn


def _after_promotion(ctx: JobContext, herd: Herd, new: Instance, drill: Drill, steps) -> str:
    """DNS, repointing, rejoining: the switch has happened; a failure now is reported as
    such, with what was left undone, never as if nothing had changed."""
    try:
        return steps()
    except (JobFailed, JobCancelled) as exc:
        _finish(drill, f"promoted; then: {_reason(exc)}")
        raise JobFailed(
            f"{herd.name} now has its primary on {lifecycle.where(new)} (accepting writes), "
            f"but a later step failed: {_reason(exc)}. Check DNS (Refresh DNS), remaster "
            "replicas not yet pointed at it, and rebuild the old primary"
        ) from None


@operation(JobKind.SWITCHOVER)
def switchover(ctx: JobContext) -> str:
    """1. live snapshot, plan (refuse clearly), check the confirmed primary is still it;
    2. stop the primary cleanly and read its final checkpoint;
    3. wait until the candidate has replayed past it (any failure or cancel up to here:
       restart the old primary, nothing promoted);
    4. promote the candidate, check it accepts writes (RTO);
    5. DNS; 6. repoint the other replicas; 7. rewind and restart the old primary as a
       replica of the new one."""
    herd, plan, instances, drill, old = _begin(ctx, DrillKind.SWITCHOVER)
    new = instances[plan.candidate.id]
    template = probe.probe(new.server.hostname, new.port).primary_conninfo
    try:
        ctx.ssh(
            old.server,
            lifecycle.command_for("stop", old, mode="fast"),
            "stop the primary (fast: shutdown checkpoint, WAL sent to replicas)",
        )
        Instance.objects.filter(pk=old.pk).update(online=False, state_changed_at=timezone.now())
        checkpoint = final_checkpoint(ctx, old)
        drill.last_known_lsn = planning.int_to_lsn(checkpoint)
        drill.save(update_fields=["last_known_lsn"])
        _wait_replayed(ctx, new, checkpoint)
    except (JobFailed, JobCancelled) as exc:
        _abort_before_promotion(ctx, old, drill, exc)
    _promote(ctx, herd, new, drill, 0, None, f"the old primary {lifecycle.where(old)} is stopped")
    Instance.objects.filter(pk=old.pk).update(role=Role.REPLICA, upstream=new)

    def rest() -> str:
        problem = move_dns(ctx, herd, new, drill)
        for other in instances.values():
            if other.pk not in (old.pk, new.pk) and other.role == Role.REPLICA and other.online:
                repoint(ctx, other, new)
        rejoin_as_replica(ctx, old, new, template)
        return problem

    dns_problem = _after_promotion(ctx, herd, new, drill, rest)
    _finish(drill, dns_problem or "completed")
    if dns_problem:
        raise JobFailed(f"{herd.name} switched over to {lifecycle.where(new)}, but {dns_problem}")
    return (
        f"{herd.name} switched over to {lifecycle.where(new)} (RTO {drill.rto_seconds:.2f} s, "
        f"0 bytes lost); {lifecycle.where(old)} is now its replica"
    )


@operation(JobKind.FAILOVER)
def failover(ctx: JobContext) -> str:
    """1. live snapshot and plan: the most up-to-date replica, refused past the loss
    threshold unless accepted; 2. fence the old primary (stop it if its server answers,
    keep it from starting at boot; else mark it fenced); 3. promote, check writes (RTO);
    4. DNS; 5. repoint the other replicas; 6. mark the old primary as needing a rebuild."""
    herd, plan, instances, drill, old = _begin(ctx, DrillKind.FAILOVER)
    new = instances[plan.candidate.id]
    fenced_note = fence(ctx, old) if old is not None else ""
    lost = plan.data_loss_bytes
    _promote(
        ctx,
        herd,
        new,
        drill,
        lost,
        planning.int_to_lsn(plan.candidate.best_lsn),
        "the old primary is fenced",
    )

    def rest() -> str:
        problem = move_dns(ctx, herd, new, drill)
        for other in instances.values():
            if old is not None and other.pk == old.pk:
                continue
            if other.pk != new.pk and other.role == Role.REPLICA and not other.fenced:
                live, _ = lifecycle.try_probe(other)
                if live is not None:
                    repoint(ctx, other, new)
                else:
                    ctx.note(f"{lifecycle.where(other)} not answering", "remaster it later")
        return problem

    dns_problem = _after_promotion(ctx, herd, new, drill, rest)
    lost_text = (
        f"{planning.format_bytes(lost)} lost"
        if lost is not None
        else "loss unknown (no last known primary position)"
    )
    _finish(drill, dns_problem or "completed")
    if dns_problem:
        raise JobFailed(f"{herd.name} failed over to {lifecycle.where(new)}, but {dns_problem}")
    return (
        f"{herd.name} failed over to {lifecycle.where(new)} (RTO "
        f"{drill.rto_seconds:.2f} s, {lost_text}); {fenced_note}"
    )


def fence(ctx: JobContext, old: Instance) -> str:
    """Make sure the old primary cannot take writes again: stop it where its server answers
    (and keep Debian from starting it at boot); otherwise only the inventory can fence it."""
    Instance.objects.filter(pk=old.pk).update(
        fenced=True, needs_rebuild=True, online=False, state_changed_at=timezone.now()
    )
    try:
        ctx.ssh(
            old.server,
            lifecycle.command_for("stop", old, mode="immediate"),
            f"fence {lifecycle.where(old)}: stop it",
            check=False,
        )
    except JobFailed as exc:
        # Its server does not answer: the step records why; the failover goes on.
        return (
            f"{lifecycle.where(old)} could not be reached to stop it ({exc}): it is "
            "marked fenced in the inventory; make sure it stays down"
        )
    if old.herd.cluster_name and settings.COMMANDS_PRESET == "debian":
        ctx.ssh(
            old.server,
            [
                "sh",
                "-c",
                'echo manual > "$1"',
                "sh",
                f"/etc/postgresql/{old.effective_pg_version}/"
                f"{old.effective_cluster_name}/start.conf",
            ],
            "keep it from starting at boot (start.conf: manual)",
            check=False,
        )
    return f"{lifecycle.where(old)} stopped and fenced; rebuild it to rejoin"
