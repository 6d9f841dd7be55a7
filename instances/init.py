"""Init: create an instance of a herd on a server, configured from its herd, then started
(a primary as it is, a replica from a full copy of its upstream). Each step checks whether
it is done already, so a retry resumes.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from instances import commands, conninfo, inventory, probe, steps
from instances.choices import ClusterState, CopyMethod, JobKind, Role
from instances.jobs.registry import JobFailed, operation
from instances.jobs.runner import JobContext
from instances.models import Instance
from instances.rebuild import check_data_dir, load, max_rate_kb, rebuild_from, resolve_upstream

# Debian layout: the instance's own address and port, after the herd's configuration.
INSTANCE_CONF = "zz-elephaas-instance.conf"


def _conf_dir(instance: Instance) -> str:
    return f"/etc/postgresql/{instance.effective_pg_version}/{instance.effective_cluster_name}"


def create_cluster(ctx: JobContext, instance: Instance) -> None:
    """pg_createcluster (Debian preset; postgres may run it where /etc/postgresql/VERSION is
    its own, as on the lab) or initdb (pg_ctl preset). Skipped when already there."""
    data_dir = check_data_dir(instance)
    if settings.COMMANDS_PRESET == "debian":
        there = ctx.ssh(
            instance.server,
            ["test", "-f", f"{_conf_dir(instance)}/postgresql.conf"],
            "is the cluster already created?",
            check=False,
        )
        if there.exit_status == 0:
            ctx.note("already created", f"{_conf_dir(instance)} exists: not created again")
            return
        ctx.ssh(
            instance.server,
            commands.pg_createcluster(
                instance.effective_pg_version,
                instance.effective_cluster_name,
                instance.port,
                data_dir,
            ),
            "create the cluster (pg_createcluster)",
        )
        return
    there = ctx.ssh(
        instance.server,
        ["test", "-f", f"{data_dir}/PG_VERSION"],
        "is the cluster already created?",
        check=False,
    )
    if there.exit_status == 0:
        ctx.note("already created", f"{data_dir}/PG_VERSION exists: not created again")
        return
    ctx.ssh(
        instance.server,
        commands.initdb(steps.bindir(instance), data_dir),
        "create the cluster (initdb)",
    )


def configure_instance(ctx: JobContext, instance: Instance, source: Instance | None) -> None:
    """Debian: the herd's access rules and settings copied from `source`'s configuration
    folder (pg_hba.conf, pg_ident.conf, conf.d/), then this instance's own address and port
    in conf.d/zz-elephaas-instance.conf, read last. pg_ctl preset: the configuration lives in
    the data directory (a replica gets its upstream's with the copy); address and port go
    to postgresql.auto.conf."""
    listen = conninfo.config_line("listen_addresses", instance.server.hostname)
    port = f"port = {int(instance.port)}"
    if settings.COMMANDS_PRESET != "debian":
        ctx.ssh(
            instance.server,
            commands.set_auto_conf(instance.effective_data_dir, [listen, port]),
            "set its address and port (postgresql.auto.conf)",
        )
        return
    conf_dir = _conf_dir(instance)
    if source is not None:
        server = source.server
        ctx.ssh(
            instance.server,
            [
                "rsync",
                "-a",
                "-e",
                commands.ssh_transport(server.ssh_port),
                f"--exclude=/conf.d/{INSTANCE_CONF}",
                "--include=/pg_hba.conf",
                "--include=/pg_ident.conf",
                "--include=/conf.d/",
                "--include=/conf.d/**",
                "--exclude=*",
                commands.remote_path(server.ssh_user, server.hostname, _conf_dir(source)),
                f"{conf_dir}/",
            ],
            f"copy the herd's configuration from {source.label}",
        )
    ctx.ssh(
        instance.server,
        commands.write_conf_d(conf_dir, INSTANCE_CONF, [listen, port]),
        "set its address and port (conf.d)",
    )


@operation(JobKind.INIT)
def init(ctx: JobContext) -> str:
    """Create an instance of a herd on a server; each step checks whether it is done, so a
    retry resumes.

    1. create the cluster (pg_createcluster, or initdb) unless it exists;
    2. configure it: the herd's configuration from another instance, its own address/port;
    3. a primary: start, wait until it accepts connections;
       a replica: unless it already streams, a full copy from the herd's primary
       (rebuild_from), standby configuration, start, wait until it streams."""
    instance = load(ctx.job.instance_id)
    if instance.role not in (Role.PRIMARY, Role.REPLICA):
        raise JobFailed(f"{instance.label}: set its role (primary or replica) before creating it")
    others = [i for i in inventory.herd_instances(instance.herd_id) if i.pk != instance.pk]
    upstream = resolve_upstream(instance) if instance.role == Role.REPLICA else None
    primary = inventory.recorded_primary(others)
    if instance.role == Role.PRIMARY and primary is not None:
        raise JobFailed(
            f"{instance.herd.name} already has a primary ({primary.label}): a second one "
            "would take writes of its own; create this instance as a replica"
        )
    source = upstream or primary or (others[0] if others else None)
    if upstream is not None:
        receiver = None
        try:
            receiver = probe.wal_receiver(instance.server.hostname, instance.port)
        except probe.ProbeError:
            pass
        if receiver and receiver[:3] == ("streaming", upstream.server.hostname, upstream.port):
            result, error = steps.try_probe(instance)
            steps.record(instance, result, error)
            Instance.objects.filter(pk=instance.pk).update(
                upstream=upstream, streams_from=upstream.address, online=True
            )
            ctx.note("already streaming", f"from {upstream.label}: nothing left to do")
            return f"{instance.label} already exists and streams from {upstream.label}"
        live, _error = steps.try_probe(instance)
        if live is not None and not live.in_recovery:
            raise JobFailed(
                f"{instance.label} already exists and runs as a primary: refusing to replace "
                "its data with a copy; rebuild it (with 'force') if that is what you want"
            )
    create_cluster(ctx, instance)
    ctx.progress(2)
    if instance.role == Role.PRIMARY:
        configure_instance(ctx, instance, source)
        if steps.cluster_state(ctx, instance) != ClusterState.RUNNING:
            steps.start(ctx, instance)
        if steps.cluster_state(ctx, instance) != ClusterState.RUNNING:
            raise JobFailed(f"{instance.label}: created but it does not start: see its log")
        result, error = steps.try_probe(instance)
        Instance.objects.filter(pk=instance.pk).update(
            online=True, last_checked=timezone.now(), state_changed_at=timezone.now()
        )
        if result is None:
            return (
                f"{instance.label} created and running; ElepHaaS cannot connect to it yet "
                f"({error}): create the {settings.PG_PROBE_USER} role and a pg_hba.conf line "
                "for it"
            )
        steps.record(instance, result)
        return f"{instance.label} created and running as a primary"
    configure_instance(ctx, instance, source)
    requested = ctx.job.params.get("method") or CopyMethod.PG_BASEBACKUP
    if requested == CopyMethod.AUTO:
        requested = CopyMethod.PG_BASEBACKUP
    if requested not in (CopyMethod.PG_BASEBACKUP, CopyMethod.RSYNC):
        raise JobFailed(f"a new replica is copied with pg_basebackup or rsync, not {requested!r}")
    max_rate_kb(ctx)
    summary = rebuild_from(ctx, instance, upstream, requested, fresh=True)
    return summary.replace(" rebuilt from ", " created from ", 1)
