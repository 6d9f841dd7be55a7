"""Server jobs: check the SSH connection, and discover the clusters a server runs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from herds.models import Herd
from instances import commands, discovery, probe
from instances.choices import JobKind, Role
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance, Server


@operation(JobKind.CHECK_SERVER)
def check_server(ctx: JobContext) -> str:
    server = ctx.job.server
    result = ctx.ssh(server, ["id", "-un"], "log in and run id")
    Server.objects.filter(pk=server.pk).update(last_contact=timezone.now())
    return f"{server.hostname}: logged in as {result.stdout.strip()} with the pinned host key"


def list_clusters(ctx: JobContext, server: Server) -> list[discovery.FoundCluster]:
    """pg_lsclusters (Debian) where present; otherwise the running postmasters."""
    result = ctx.ssh(
        server, ["pg_lsclusters", "--json"], "list clusters (pg_lsclusters)", check=False
    )
    if result.exit_status == 0:
        try:
            return discovery.parse_lsclusters_json(result.stdout)
        except discovery.DiscoveryParseError as exc:
            raise JobFailed(f"{server.hostname}: {exc}") from None
    if result.exit_status != 127:
        text = ctx.ssh(
            server,
            ["pg_lsclusters", "--no-header"],
            "list clusters (pg_lsclusters, text)",
            check=False,
        )
        if text.exit_status == 0:
            return discovery.parse_lsclusters_text(text.stdout)
    ps = ctx.ssh(server, ["ps", "-eo", "pid=,ppid=,comm="], "list postmasters (ps)")
    pids = discovery.find_postmasters(ps.stdout)
    if not pids:
        return []
    report = ctx.ssh(server, commands.postmaster_report(pids), "read postmaster data directories")
    return [
        discovery.FoundCluster(
            version=pm.version,
            name=pm.data_dir.rstrip("/").rsplit("/")[-1],
            port=pm.port,
            data_dir=pm.data_dir,
            running=True,
            in_recovery=None,
        )
        for pm in discovery.parse_postmaster_report(report.stdout)
    ]


@operation(JobKind.DISCOVER)
def discover(ctx: JobContext) -> str:
    """Find the PostgreSQL clusters on a server and bring the inventory in line.

    1. list the clusters over SSH (pg_lsclusters, or running postmasters);
    2. probe each running one with SQL (role, LSN, lag, primary_conninfo);
    3. create or update its Instance, matching its herd through its upstream, an existing
       row, or its cluster name in the server's environment (created if new);
    4. mark instances recorded on this server but no longer found as offline ("gone");
    5. link replicas (here and elsewhere) whose upstream is now known.
    """
    server: Server = ctx.job.server
    clusters = list_clusters(ctx, server)
    ctx.progress(30)
    probes: dict[int, probe.ProbeResult | None] = {
        found.port: None for found in clusters if not found.running
    }
    running = [found for found in clusters if found.running]
    for found, (result, error, seconds) in zip(
        running, probe_each(server.hostname, [f.port for f in running]), strict=True
    ):
        probes[found.port] = result
        ctx.record(
            f"probe {found.name} (port {found.port})",
            f"{server.hostname}:{found.port}",
            ok=result is not None,
            # When SQL fails the listing still says what it is; the step says why.
            output=error
            or f"in recovery: {result.in_recovery}; LSN {result.lsn}; version {result.version_num}",
            duration=seconds,
        )
    ctx.progress(60)
    added, changed, same, gone, held = [], [], [], [], []
    with transaction.atomic():
        seen_ports = set()
        for found in clusters:
            seen_ports.add(found.port)
            outcome, instance, what = _reconcile(server, found, probes.get(found.port))
            {"added": added, "changed": changed, "same": same, "held": held}[outcome].append(
                f"{instance}" + (f" ({what})" if what else "")
            )
        for instance in (
            Instance.objects.with_related().filter(server=server).exclude(port__in=seen_ports)
        ):
            if instance.online is not False:
                instance.online = False
                instance.last_checked = timezone.now()
                instance.save(update_fields=["online", "last_checked", "updated_at"])
            gone.append(str(instance))
        Server.objects.filter(pk=server.pk).update(last_contact=timezone.now())
    # After the commit: discovery of the upstream's server may be running in parallel, and
    # of two such jobs the one that commits last sees both rows and makes the link.
    linked = _link_upstreams()
    for label, items in (
        ("added", added),
        ("changed", changed),
        ("gone", gone),
        ("left as is", held),
    ):
        if items:
            ctx.note(f"{label}: {len(items)}", "\n".join(items), server.hostname)
    if linked:
        ctx.note(f"linked {len(linked)} replica(s) to their upstream", "\n".join(linked))
    parts = [
        f"{len(clusters)} cluster(s) found",
        f"{len(added)} added",
        f"{len(changed)} changed",
        f"{len(same)} unchanged",
        f"{len(gone)} gone",
    ] + ([f"{len(held)} left as is (rebuild incomplete)"] if held else [])
    lines = [f"{server.hostname}: " + ", ".join(parts)]
    lines += [f"added {x}" for x in added] + [f"changed {x}" for x in changed]
    lines += [f"left as is {x}" for x in held]
    lines += [
        f"gone {x} (no cluster on that port any more; row kept, marked offline)" for x in gone
    ]
    return "\n".join(lines)


def probe_each(
    hostname: str, ports: list[int]
) -> list[tuple[probe.ProbeResult | None, str, float]]:
    """Probe a server's clusters at once: (result or None, why not, seconds) per port.

    On the kept connections the health sweep uses (same query, same timeouts): probing
    the 5 clusters of each of 40 servers one after another on new connections (a backend
    fork and a SCRAM exchange each) made most of a rediscovery (bench_scale_discovery).
    """
    timeout = float(settings.PG_PROBE_CONNECT_TIMEOUT)

    def one(port: int) -> tuple[probe.ProbeResult | None, str, float]:
        started = time.monotonic()
        try:
            result = probe.probe(hostname, port, statement_timeout=timeout, keep=True)
            return result, "", time.monotonic() - started
        except probe.ProbeError as exc:
            return None, str(exc), time.monotonic() - started

    if not ports:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(ports))) as pool:
        return list(pool.map(one, ports))


def _herd_for(server: Server, found: discovery.FoundCluster, existing: Instance | None) -> Herd:
    if existing is not None:
        return existing.herd
    upstream = found.upstream
    environment = server.environment
    if upstream:
        host, port = upstream
        up = (
            Instance.objects.select_related("herd").filter(server__hostname=host, port=port).first()
        )
        if up is not None:
            return up.herd
        up_server = Server.objects.filter(hostname=host).select_related("environment").first()
        if up_server is not None:
            # The primary's server is known but not yet discovered: its herd lives in the
            # primary's environment (a DR replica elsewhere still belongs to it).
            environment = up_server.environment
    herd = Herd.objects.filter(environment=environment, cluster_name=found.name).first()
    if herd is None:
        herd = Herd.objects.filter(environment=environment, name=found.name).first()
    if herd is not None:
        return herd
    data_root = _data_root(found)
    try:
        with transaction.atomic():
            return Herd.objects.create(
                name=found.name,
                environment=environment,
                port=found.port,
                pg_version=found.version,
                cluster_name=found.name,
                data_root=data_root or "/var/lib/postgresql",
                description="created by discovery",
            )
    except IntegrityError:
        # Discovery of another server created it a moment ago.
        return Herd.objects.get(environment=environment, name=found.name)


def _data_root(found: discovery.FoundCluster) -> str | None:
    suffix = f"/{found.version}/{found.name}"
    path = found.data_dir.rstrip("/")
    return path[: -len(suffix)] if path.endswith(suffix) and len(path) > len(suffix) else None


def _reconcile(
    server: Server, found: discovery.FoundCluster, result: probe.ProbeResult | None
) -> tuple[str, Instance, str]:
    existing = (
        Instance.objects.select_related("herd", "server")
        .filter(server=server, port=found.port)
        .first()
    )
    if existing is not None and existing.rebuild_job is not None:
        # Whatever runs in a half-copied directory is not what the herd has: never record
        # it as a primary (or anything else) until a rebuild finishes.
        return "held", existing, existing.unfinished_rebuild
    herd = _herd_for(server, found, existing)
    instance = existing or Instance(herd=herd, server=server, port=found.port)
    before = _snapshot(instance) if existing else None
    in_recovery = result.in_recovery if result is not None else found.in_recovery
    instance.pg_version = found.version
    instance.role = (
        Role.UNKNOWN if in_recovery is None else Role.REPLICA if in_recovery else Role.PRIMARY
    )
    instance.online = found.running and (result is not None or found.in_recovery is not None)
    if not found.running:
        instance.online = False
    derived = f"{herd.data_root.rstrip('/')}/{found.version}/{herd.effective_cluster_name}"
    instance.data_dir = "" if found.data_dir.rstrip("/") == derived else found.data_dir
    conninfo = result.primary_conninfo if result is not None else found.primary_conninfo
    instance.streams_from = ""
    if instance.role == Role.REPLICA:
        up = discovery.FoundCluster(
            found.version, found.name, found.port, found.data_dir, found.running, True, conninfo
        ).upstream
        instance.streams_from = f"{up[0]}:{up[1]}" if up else ""
        instance.upstream = _instance_at(up) if up else None
    else:
        instance.upstream = None
    if result is not None:
        instance.last_lsn = result.lsn
        instance.lag_bytes = result.lag_bytes
        instance.lag_seconds = result.lag_seconds
    instance.last_checked = timezone.now()
    instance.save()
    if before is None:
        return "added", instance, f"{instance.role}, version {found.version}"
    after = _snapshot(instance)
    diffs = [f"{k} {before[k]} → {after[k]}" for k in after if before[k] != after[k]]
    return ("changed" if diffs else "same"), instance, "; ".join(diffs)


def _instance_at(address: tuple[str, int] | None) -> Instance | None:
    if not address:
        return None
    return Instance.objects.filter(server__hostname=address[0], port=address[1]).first()


def _snapshot(instance: Instance) -> dict:
    return {
        "role": instance.role,
        "online": instance.online,
        "version": instance.pg_version,
        "upstream": str(instance.upstream) if instance.upstream_id else "-",
        "data_dir": instance.data_dir or "(default)",
    }


def _link_upstreams() -> list[str]:
    linked = []
    pending = (
        Instance.objects.with_related()
        .filter(role=Role.REPLICA, upstream__isnull=True)
        .exclude(streams_from="")
    )
    for replica in pending:
        host, _, port = replica.streams_from.rpartition(":")
        upstream = _instance_at((host, int(port))) if port.isdigit() else None
        if upstream is not None and upstream.pk != replica.pk:
            replica.upstream = upstream
            replica.save(update_fields=["upstream", "updated_at"])
            linked.append(f"{replica} → {upstream}")
    return linked
