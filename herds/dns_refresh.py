"""Refresh DNS: re-point a herd's vhosts where the inventory says they belong."""

from __future__ import annotations

from django.conf import settings

from herds import dns, dns_records
from instances.choices import JobKind, JobState
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Job


def _dns_server() -> str:
    return f"{settings.DNS_SERVER}:{settings.DNS_PORT}"


def _detail(result: dns.DNSResult) -> str:
    return (
        f"{result.describe()}; {result.record_type}, TTL {result.ttl} s; answer checked on "
        f"{result.server} in {result.seconds:.2f} s"
    )


@operation(JobKind.REFRESH_DNS)
def refresh_dns(ctx: JobContext) -> str:
    """Re-apply the herd's DNS records from the inventory.

    1. read the inventory: the one online, unfenced primary and the online replicas;
       refuse (changing nothing) on no primary, a fenced or offline one, or split brain;
    2. vhost → the primary's server: one signed update, then read back from the server;
    3. read-only vhost → every online replica's address (deleted when none is online).

    Running it twice is safe: each update replaces the name's records with the same ones.
    Several queued at once collapse into one: a refresh of the herd that succeeded and
    started after this one was queued read an inventory at least as new (it held the herd's
    lock, which this job holds now), so this one has nothing left to do.
    """
    herd = ctx.job.herd
    if herd is None:
        raise JobFailed("the herd of this job no longer exists: nothing to point DNS at")
    newer = (
        Job.objects.filter(
            kind=JobKind.REFRESH_DNS,
            herd=herd,
            state=JobState.SUCCEEDED,
            started_at__gte=ctx.job.created_at,
        )
        .exclude(pk=ctx.job.pk)
        .exclude(steps__name="already refreshed")  # name the one that did the work
        .order_by("-finished_at")
        .first()
    )
    if newer is not None:
        ctx.note(
            "already refreshed",
            f"job #{newer.pk} started after this one was queued and applied the records",
        )
        return (
            f"{herd.name}: nothing to do, DNS was refreshed by job #{newer.pk}, which read "
            "the inventory after this job was queued"
        )
    desired = dns_records.desired_records(herd, herd.instances.select_related("server"))
    ctx.note("read the inventory", desired["reason"])
    if not herd.vhost and not herd.ro_vhost:
        return f"{herd.name} has neither a vhost nor a read-only vhost: nothing to do"
    if herd.vhost and desired["refusal"]:
        raise JobFailed(f"DNS not changed: {desired['refusal']}")

    done: list[dns.DNSResult] = []
    if herd.vhost:
        target = desired["primary"]
        with ctx.step(f"point {herd.vhost} at {target}", _dns_server()) as step:
            try:
                result = dns.point_vhost(herd.vhost, target)
            except dns.DNSError as exc:
                raise JobFailed(f"vhost of {herd.name}: {exc}") from exc
            step.output = _detail(result)
        done.append(result)
    if herd.ro_vhost:
        replicas = desired["replicas"]
        what = f"list {', '.join(replicas)} under" if replicas else "delete (no online replica)"
        with ctx.step(f"{what} {herd.ro_vhost}", _dns_server()) as step:
            try:
                result = dns.set_ro_vhost(herd.ro_vhost, replicas)
            except dns.DNSError as exc:
                already = f" (already done: {done[0].describe()})" if done else ""
                raise JobFailed(f"read-only vhost of {herd.name}: {exc}{already}") from exc
            step.output = _detail(result)
        done.append(result)
    return "\n".join(result.describe() for result in done)
