"""Build herds on the lab: a primary on one server, streaming replicas on others.

Each instance is a Debian cluster (pg_createcluster) in its server's namespace, listening
on the server's own address, with data checksums on (so pg_rewind works), a `replicator`
role for streaming and an `elephaas` role for the controller's probe. Passwords live in
each server's ~postgres/.pgpass, never in primary_conninfo or on a command line.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence

from . import fleet
from .state import LabError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")

INSTANCE_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "wal_log_hints": "on",
    "wal_keep_size": "'256MB'",
    "max_connections": "50",
    "shared_buffers": "'32MB'",
    "wal_receiver_status_interval": "1s",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}
HBA = [
    "host replication replicator 127.0.0.0/8 scram-sha-256",
    "host all all 127.0.0.0/8 scram-sha-256",
]


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise LabError(f"herd name {name!r}: use lower-case letters, digits and _ (max 31)")


def create(
    name: str,
    primary: int,
    replicas: list[int],
    port: int = 5432,
    version: str | None = None,
    settings: dict[str, str] | None = None,
    initdb_options: Sequence[str] = (),
) -> dict:
    """Create (or complete) a herd; idempotent. Returns a description of its instances.

    1. create the primary's cluster, start it, create the replicator and elephaas roles;
    2. for each replica server: copy the primary's configuration, fill the data directory
       with a pg_basebackup of the primary, mark it standby, point it at the primary, start;
    3. wait until the primary's pg_stat_replication shows every replica streaming.

    `settings` replaces INSTANCE_SETTINGS (the scale lab's small instances).
    """
    check_name(name)
    version = version or fleet.pg_version()
    settings = INSTANCE_SETTINGS if settings is None else settings
    if primary in replicas:
        raise LabError("a herd's primary and replicas must be on different servers")
    ns = fleet.server_ns(primary)
    address = fleet.server_address(primary)
    fleet.create_cluster(ns, version, name, port, address, settings, HBA, initdb_options)
    fleet.start_cluster(ns, version, name)
    fleet.psql(
        ns,
        port,
        f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') THEN
    CREATE ROLE replicator LOGIN REPLICATION;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'elephaas') THEN
    CREATE ROLE elephaas LOGIN SUPERUSER;
  END IF;
END $$;
ALTER ROLE replicator PASSWORD {fleet.sql_literal(fleet.ensure_secret("replication_password"))};
ALTER ROLE elephaas PASSWORD {fleet.sql_literal(fleet.ensure_secret("pg_password"))};
""",
    )
    for number in replicas:
        add_replica(name, number, upstream=primary, port=port, version=version, settings=settings)
    wait_streaming(primary, port, len(replicas))
    return describe(name, primary, replicas, port, version)


def add_replica(
    name: str,
    number: int,
    upstream: int,
    port: int,
    version: str,
    settings: dict[str, str] | None = None,
) -> None:
    """A streaming replica of `upstream`'s cluster on server `number`, made without initdb.

    pg_createcluster would initdb a data directory only to throw it away for the copy
    (2-4 s of a 2-core machine per replica, most of a replica's cost); instead the
    upstream's configuration folder is copied as is (Debian's paths inside it are the
    same on every lab server, each being a mount namespace) and only the lab's own
    settings (its listen address) are written again.
    """
    ns = fleet.server_ns(number)
    conf_dir = ns.folder / "etc" / version / name
    data_dir = ns.folder / "lib" / version / name
    settings = INSTANCE_SETTINGS if settings is None else settings
    # An existing replica is left as it is (it may be a primary by now, after a drill);
    # one whose copy never finished (no PG_VERSION) is made again.
    if not (conf_dir / "postgresql.conf").exists() or not (data_dir / "PG_VERSION").exists():
        source = fleet.server_ns(upstream).folder / "etc" / version / name
        if not (source / "postgresql.conf").exists():
            raise LabError(f"srv{upstream} has no cluster {version}/{name} to copy from")
        shutil.rmtree(conf_dir, ignore_errors=True)
        conf_dir.parent.mkdir(parents=True, exist_ok=True)
        fleet.chown_postgres(conf_dir.parent)
        shutil.copytree(source, conf_dir, symlinks=True)
        fleet.chown_postgres(conf_dir, recursive=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        fleet.chown_postgres(data_dir.parent)
        data_dir.mkdir(mode=0o700)
        fleet.chown_postgres(data_dir)
        ns.run(
            [
                "pg_basebackup",
                "--host",
                fleet.server_address(upstream),
                "--port",
                str(port),
                "--username",
                "replicator",
                "--no-password",
                "--pgdata",
                f"/var/lib/postgresql/{version}/{name}",
                "--wal-method",
                "stream",
                "--checkpoint",
                "fast",
            ],
            user="postgres",
            timeout=600,
        )
        conninfo = (
            f"host={fleet.server_address(upstream)} port={port} user=replicator "
            f"application_name={name}_srv{number}"
        )
        with open(data_dir / "postgresql.auto.conf", "a") as out:
            out.write(f"primary_conninfo = '{conninfo}'\n")
        (data_dir / "standby.signal").touch()
        fleet.chown_postgres(data_dir / "standby.signal")
    fleet.write_cluster_conf(ns, version, name, fleet.server_address(number), settings, HBA)
    fleet.start_cluster(ns, version, name)


def wait_streaming(primary: int, port: int, count: int, timeout: float = 60) -> None:
    ns = fleet.server_ns(primary)
    deadline = time.monotonic() + timeout
    while True:
        seen = int(
            fleet.psql(
                ns, port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )
        )
        if seen >= count:
            return
        if time.monotonic() > deadline:
            raise LabError(f"only {seen} of {count} replicas streaming from srv{primary}:{port}")
        time.sleep(0.1)


def drop(name: str) -> None:
    """Remove the herd's clusters from every lab server (stopping them first)."""
    check_name(name)
    version = fleet.pg_version()
    for number in fleet._known_servers():
        ns = fleet.server_ns(number)
        if (ns.folder / "etc" / version / name / "postgresql.conf").exists():
            ns.run(["pg_dropcluster", "--stop", version, name], timeout=120)


def describe(name: str, primary: int, replicas: list[int], port: int, version: str) -> dict:
    return {
        "name": name,
        "port": port,
        "version": version,
        "primary": {"server": primary, "address": fleet.server_address(primary)},
        "replicas": [{"server": n, "address": fleet.server_address(n)} for n in replicas],
    }
