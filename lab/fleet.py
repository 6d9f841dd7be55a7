"""Bring the lab up and down: servers (sshd per mount namespace), the metadata database,
Redis, BIND, slapd, the Celery worker and the web admin.

Every process the lab starts has a pid file under LAB_DIR; `down` stops exactly those
(and anything still running inside the lab's own mount namespaces, which by construction
only the lab created), so it never touches a PostgreSQL, Redis or sshd that was already
on the machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from elephaas import service

from . import proc
from .state import (
    ADDRESS_PREFIX,
    ENV_FILE,
    LAB_DIR,
    PROFILE,
    REPO_DIR,
    SECRETS_DIR,
    SERVERS_DIR,
    LabError,
    record_profile,
)


def _ssh_port() -> int:
    """Port 22 as on real servers, unless the machine's own sshd holds *:22 (a stock Debian
    with systemd starts one when openssh-server is installed): then 2222. The choice is kept
    in the lab folder so that pinned inventories stay valid across runs."""
    if os.environ.get("LAB_SSH_PORT"):
        return int(os.environ["LAB_SSH_PORT"])
    chosen = LAB_DIR / "ssh_port"
    if chosen.exists():
        return int(chosen.read_text())
    import socket

    port = 22
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((f"{ADDRESS_PREFIX}.250", 22))
        except OSError:
            port = 2222
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    chosen.write_text(f"{port}\n")
    return port


SSH_PORT = _ssh_port()
META_ADDRESS = "127.0.0.1"
# Each profile has ports of its own (state.PROFILES), so a scale lab runs beside the
# default one; LAB_META_PORT and the others override them.
META_PORT = PROFILE.meta_port
REDIS_PORT = PROFILE.redis_port
DNS_PORT = PROFILE.dns_port
LDAP_PORT = PROFILE.ldap_port
WEB_PORT = PROFILE.web_port
ZONE = "lab.elephaas.test"
TSIG_NAME = "elephaas-lab"
LDAP_BASE = "dc=elephaas,dc=test"
LDAP_USERS = {
    # uid: (full name, role group)
    "alice": ("Alice DBA", "elephaas-dba"),
    "oscar": ("Oscar Operator", "elephaas-operator"),
    "victor": ("Victor Viewer", "elephaas-viewer"),
    "sam": ("Sam Superuser", "elephaas-admins"),
}
LDAP_GROUPS = ["elephaas-dba", "elephaas-operator", "elephaas-viewer", "elephaas-admins"]

PG_DIRS = {
    "lib": "/var/lib/postgresql",
    "etc": "/etc/postgresql",
    "run": "/var/run/postgresql",
    "log": "/var/log/postgresql",
}
REQUIRED_COMMANDS = {
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "runuser": "util-linux",
    "pg_createcluster": "postgresql-common",
    "pg_ctlcluster": "postgresql-common",
    "named": "bind9",
    "named-checkconf": "bind9-utils",
    "nsupdate": "bind9-dnsutils",
    "slapd": "slapd",
    "slapadd": "slapd",
    "ldapwhoami": "ldap-utils",
    "redis-server": "redis-server",
    "rsync": "rsync",
}

CONTROLLER_DIR = LAB_DIR / "controller"
CONTROLLER_KEY = CONTROLLER_DIR / "id_ed25519"
META_DIR = LAB_DIR / "meta"
REDIS_DIR = LAB_DIR / "redis"
DNS_DIR = LAB_DIR / "dns"
LDAP_DIR = LAB_DIR / "ldap"
CELERY_DIR = LAB_DIR / "celery"
WEB_DIR = LAB_DIR / "web"
LOG_DIR = LAB_DIR / "log"
UP_MARK = LAB_DIR / "up.ok"


def say(message: str) -> None:
    print(f"lab: {message}", flush=True)


def pg_version() -> str:
    """The newest PostgreSQL server version installed (Debian layout)."""
    root = Path("/usr/lib/postgresql")
    versions = (
        sorted(
            (p.name for p in root.iterdir() if (p / "bin" / "postgres").exists()),
            key=lambda v: int(v) if v.isdigit() else 0,
        )
        if root.is_dir()
        else []
    )
    if not versions:
        raise LabError("no PostgreSQL server is installed (apt-get install postgresql)")
    return versions[-1]


def server_address(number: int) -> str:
    if not 1 <= number <= 250:
        raise LabError(f"server number {number} is out of range 1–250")
    return f"{ADDRESS_PREFIX}.{number}"


# --- pre-flight --------------------------------------------------------------------------


def preflight() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (mount namespaces, sshd, postgres clusters): run as root"
        )
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if not _which(cmd)})
    if missing:
        raise LabError(
            "missing packages: " + " ".join(missing) + " (make demo / make test install them; "
            "or apt-get install " + " ".join(missing) + ")"
        )
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise LabError("there is no postgres account (apt-get install postgresql)") from None


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


# --- secrets and keys ----------------------------------------------------------------------


def ensure_secret(name: str, nbytes: int = 24, *, b64: bool = False) -> str:
    SECRETS_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(SECRETS_DIR, 0o700)
    path = SECRETS_DIR / name
    if not path.exists():
        raw = secrets.token_bytes(nbytes)
        value = base64.b64encode(raw).decode() if b64 else secrets.token_urlsafe(nbytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
    return path.read_text().strip()


def ensure_keypair(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def public_key(path: Path) -> str:
    return Path(f"{path}.pub").read_text().strip()


def chown_postgres(path: Path, recursive: bool = False) -> None:
    import pwd

    pw = pwd.getpwnam("postgres")
    targets = [path]
    if recursive:
        targets += [p for p in path.rglob("*")]
    for target in targets:
        os.chown(target, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


# --- mount namespaces ------------------------------------------------------------------------


@dataclass
class Namespace:
    """A mount namespace in which the Debian PostgreSQL paths are this folder's own.

    A tiny holder process (`sleep infinity`) keeps the namespace alive, so that sshd and
    postmasters can be stopped and started again inside it (a test can kill a server's
    sshd and Postgres and the lab can bring them back).
    """

    name: str
    folder: Path

    @property
    def holder_pidfile(self) -> Path:
        return self.folder / "holder.pid"

    @property
    def ns_file(self) -> Path:
        return self.folder / "mnt.ns"

    def holder(self) -> int | None:
        return proc.running_from(self.holder_pidfile)

    def ensure(self) -> int:
        pid = self.holder()
        if pid:
            return pid
        self._make_folders()
        ready = self.folder / "holder.ready"
        ready.unlink(missing_ok=True)
        script = " && ".join(
            [f"mkdir -p {host}" for host in PG_DIRS.values()]
            + [f"mount --bind {self.folder / key} {host}" for key, host in PG_DIRS.items()]
            + [f"touch {ready}", "exec sleep infinity"]
        )
        pid = proc.spawn(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            self.holder_pidfile,
            LOG_DIR / f"{self.name}-holder.log",
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if not proc.alive(pid) or time.monotonic() > deadline:
                raise LabError(
                    f"could not create the mount namespace for {self.name}: "
                    f"see {LOG_DIR / (self.name + '-holder.log')}"
                )
            time.sleep(0.02)
        ns = proc.mount_ns(pid)
        if not ns or ns == proc.mount_ns(os.getpid()):
            raise LabError(f"{self.name}: unshare did not create a new mount namespace")
        self.ns_file.write_text(ns + "\n")
        return pid

    def _make_folders(self) -> None:
        for key in PG_DIRS:
            (self.folder / key).mkdir(parents=True, exist_ok=True)
        for key in ("lib", "run", "log", "etc"):
            chown_postgres(self.folder / key)
        os.chmod(self.folder / "lib", 0o755)
        os.chmod(self.folder / "run", 0o2775)
        os.chmod(self.folder / "log", 0o1775)
        os.chmod(self.folder / "etc", 0o755)

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 300,
    ):
        pid = self.holder()
        if not pid:
            raise LabError(f"{self.name} is not running: run `python -m lab up`")
        return proc.run(
            proc.in_namespace(pid, argv, user), input=input, check=check, timeout=timeout
        )

    def leftover_pids(self) -> list[int]:
        try:
            ns = self.ns_file.read_text().strip()
        except FileNotFoundError:
            return []
        return [p for p in proc.pids_in_namespace(ns) if p != os.getpid()]

    def clusters(self) -> list[tuple[str, str, int]]:
        """(version, name, port) of every Debian cluster configured in this namespace."""
        found = []
        etc = self.folder / "etc"
        for conf in sorted(etc.glob("*/*/postgresql.conf")):
            version, name = conf.parent.parent.name, conf.parent.name
            port = 5432
            for line in conf.read_text().splitlines():
                stripped = line.split("#", 1)[0].strip()
                if stripped.startswith("port") and "=" in stripped:
                    port = int(stripped.split("=", 1)[1].strip())
            found.append((version, name, port))
        return found

    def postmaster_pids(self) -> list[tuple[Path, int]]:
        found = []
        for pidfile in sorted((self.folder / "lib").glob("*/*/postmaster.pid")):
            pid = proc.read_pid(pidfile)
            if proc.alive(pid):
                found.append((pidfile, pid))
        return found

    def stop(self) -> None:
        if self.holder():
            for version, name, _port in self.clusters():
                self.run(
                    ["pg_ctlcluster", "--mode", "fast", version, name, "stop"],
                    check=False,
                    timeout=120,
                )
        for pidfile, pid in self.postmaster_pids():
            proc.stop_pid(pid, f"postgres {pidfile.parent}")
        pid = self.holder()
        if pid:
            proc.stop_pid(pid, f"{self.name} namespace holder")
        for pid in self.leftover_pids():
            proc.stop_pid(pid, f"process {pid} left in {self.name}'s namespace", timeout=5)
        self.holder_pidfile.unlink(missing_ok=True)


def create_cluster(
    ns: Namespace,
    version: str,
    name: str,
    port: int,
    listen: str,
    settings: dict[str, str],
    hba: list[str],
    initdb_options: Sequence[str] = (),
) -> bool:
    """Create a Debian cluster in `ns` if it is not there yet; True when it was created."""
    conf_dir = ns.folder / "etc" / version / name
    created = False
    if not (conf_dir / "postgresql.conf").exists():
        ns.run(
            [
                "pg_createcluster",
                "--port",
                str(port),
                version,
                name,
                "--",
                "--data-checksums",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                *initdb_options,
            ]
        )
        created = True
    write_cluster_conf(ns, version, name, listen, settings, hba)
    return created


def write_cluster_conf(
    ns: Namespace, version: str, name: str, listen: str, settings: dict[str, str], hba: list[str]
) -> None:
    """The lab's own settings (conf.d/elephaas-lab.conf) and pg_hba lines of a cluster."""
    conf_dir = ns.folder / "etc" / version / name
    conf = {"listen_addresses": f"'{listen}'", **settings}
    lines = ["# written by the ElepHaaS lab"] + [f"{k} = {v}" for k, v in conf.items()]
    lab_conf = conf_dir / "conf.d" / "elephaas-lab.conf"
    lab_conf.parent.mkdir(exist_ok=True)
    lab_conf.write_text("\n".join(lines) + "\n")
    hba_path = conf_dir / "pg_hba.conf"
    marker = "# elephaas lab access\n"
    text = hba_path.read_text()
    if marker not in text:
        hba_path.write_text(text + "\n" + marker + "\n".join(hba) + "\n")
    chown_postgres(lab_conf)


def cluster_running(ns: Namespace, version: str, name: str) -> bool:
    pidfile = ns.folder / "lib" / version / name / "postmaster.pid"
    return proc.alive(proc.read_pid(pidfile))


def start_cluster(ns: Namespace, version: str, name: str) -> None:
    """Start a Debian cluster as pg_ctlcluster does (its configuration, its log file), but
    with pg_ctl itself: pg_ctlcluster polls in 0.5 s steps and then checks the socket
    again, 2.3 s a start against 0.14 s, which made most of a scale lab's bring-up."""
    if cluster_running(ns, version, name):
        return
    bindir = Path("/usr/lib/postgresql") / version / "bin"
    config = f"/etc/postgresql/{version}/{name}/postgresql.conf"
    ns.run(
        [
            str(bindir / "pg_ctl"),
            "start",
            "--wait",
            "--silent",
            "--pgdata",
            f"/var/lib/postgresql/{version}/{name}",
            "--log",
            f"/var/log/postgresql/postgresql-{version}-{name}.log",
            "--options",
            f"-c config_file={config}",
        ],
        user="postgres",
        timeout=120,
    )


def psql(ns: Namespace, port: int, sql: str, db: str = "postgres") -> str:
    """Run SQL as the postgres superuser over the namespace's unix socket (SQL on stdin,
    so passwords in it never appear in a process list)."""
    done = ns.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-p", str(port), "-d", db],
        user="postgres",
        input=sql,
    )
    return done.stdout.strip()


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- servers -----------------------------------------------------------------------------------


def server_ns(number: int) -> Namespace:
    return Namespace(f"srv{number}", SERVERS_DIR / f"srv{number}")


def sshd_pidfile(number: int) -> Path:
    return SERVERS_DIR / f"srv{number}" / "sshd.pid"


def ensure_server(number: int) -> None:
    ns = server_ns(number)
    folder = ns.folder
    address = server_address(number)
    ssh_dir = folder / "ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    host_key = ssh_dir / "ssh_host_ed25519_key"
    ensure_keypair(host_key, f"srv{number}-host")
    holder = ns.ensure()
    # The postgres account's home is the server's own /var/lib/postgresql.
    home_ssh = folder / "lib" / ".ssh"
    home_ssh.mkdir(exist_ok=True)
    ensure_keypair(home_ssh / "id_ed25519", f"postgres@srv{number}")
    chown_postgres(home_ssh, recursive=True)
    os.chmod(home_ssh, 0o700)
    key_type, key_b64 = public_key(host_key).split()[:2]
    fingerprint = "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(key_b64)).digest()
    ).decode().rstrip("=")
    (folder / "server.json").write_text(
        json.dumps(
            {
                "name": f"srv{number}",
                "number": number,
                "hostname": address,
                "ssh_port": SSH_PORT,
                "ssh_user": "postgres",
                "host_key_type": key_type,
                "host_key": key_b64,
                "host_key_fingerprint": fingerprint,
            },
            indent=2,
        )
        + "\n"
    )
    config = ssh_dir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "# written by the ElepHaaS lab",
                f"ListenAddress {address}:{SSH_PORT}",
                f"HostKey {host_key}",
                f"PidFile {sshd_pidfile(number)}",
                "AuthorizedKeysFile .ssh/authorized_keys",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                "AllowUsers postgres",
                "UsePAM no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "MaxStartups 200:30:400",
                "MaxSessions 100",
                "ClientAliveInterval 30",
                "LogLevel INFO",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    if proc.running_from(sshd_pidfile(number)):
        return
    proc.require_port(
        address,
        SSH_PORT,
        f"sshd for srv{number}",
        "set LAB_SSH_PORT to use another port for the lab's servers",
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc.run(proc.in_namespace(holder, ["/usr/sbin/sshd", "-t", "-f", str(config)]))
    proc.run(
        proc.in_namespace(
            holder,
            ["/usr/sbin/sshd", "-f", str(config), "-E", str(LOG_DIR / f"srv{number}-sshd.log")],
        )
    )
    proc.wait_port(address, SSH_PORT, f"sshd for srv{number}", timeout=10)


def boot_clusters(number: int) -> None:
    """Start the clusters whose start.conf says `auto`, as a Debian server does at boot."""
    ns = server_ns(number)
    for version, name, _port in ns.clusters():
        start_conf = ns.folder / "etc" / version / name / "start.conf"
        mode = "auto"
        if start_conf.exists():
            lines = [ln.split("#", 1)[0].strip() for ln in start_conf.read_text().splitlines()]
            mode = next((ln for ln in lines if ln), "auto")
        if mode == "auto" and not cluster_running(ns, version, name):
            try:
                start_cluster(ns, version, name)
            except LabError as exc:
                # As at a boot: one cluster that does not start holds up no other.
                say(f"srv{number}: {version}/{name} did not start: {exc}")


CPUSETS = Path("/sys/fs/cgroup/cpuset")


def cpuset(side: str) -> Path:
    return CPUSETS / f"elephaas-lab-{PROFILE.name}-{side}"


def split_cores(numbers: list[int]) -> dict[str, str]:
    """PROFILE.split_cores: the fleet's processes (these servers') on the upper half of the
    cores, the controllers' on the lower half; their children inherit it. Returns the
    cores of each side ({} when not split: one core, or no cgroup v1 cpuset controller)."""
    cores = os.cpu_count() or 1
    if not PROFILE.split_cores or cores < 2:
        return {}
    if not (CPUSETS / "cpuset.cpus").exists():
        say(f"no cpuset controller at {CPUSETS}: the fleet and the controllers share the cores")
        return {}
    half = cores // 2
    sides = {"controllers": _cores(0, half - 1), "fleet": _cores(half, cores - 1)}
    mems = (CPUSETS / "cpuset.mems").read_text().strip()
    from . import controller

    fleet = [pid for number in numbers for pid in server_ns(number).leftover_pids()]
    controllers = [proc.running_from(pidfile) for _name, pidfile in services()]
    controllers += meta_ns().leftover_pids()
    for _name, holder in controller.running():
        controllers += controller.pids(holder)
    members = {
        "fleet": fleet,
        "controllers": proc.with_descendants([pid for pid in controllers if pid]),
    }
    for side, cpus in sides.items():
        group = cpuset(side)
        group.mkdir(exist_ok=True)
        (group / "cpuset.mems").write_text(f"{mems}\n")
        (group / "cpuset.cpus").write_text(f"{cpus}\n")
        for pid in members[side]:
            try:
                (group / "cgroup.procs").write_text(f"{pid}\n")
            except OSError:
                pass  # gone meanwhile
    return sides


def _cores(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def remove_cpusets() -> None:
    """Their processes are gone at `down`: the cpusets go too."""
    for side in ("fleet", "controllers"):
        try:
            cpuset(side).rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            say(f"could not remove {cpuset(side)}: {exc}")


def crash_server(number: int) -> list[int]:
    """Simulate a server dying: SIGKILL every process in its namespace (sshd, its sessions,
    every postmaster) except the holder, so that established connections drop too."""
    import signal

    ns = server_ns(number)
    holder = ns.holder()
    killed = []
    for pid in ns.leftover_pids():
        if pid != holder:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    for pid in killed:
        for _ in range(100):
            if not proc.alive(pid):
                break
            time.sleep(0.02)
    return killed


def write_trust(numbers: list[int]) -> None:
    """Every server trusts the controller's key and every other server's postgres key, and
    knows every server's host key (pinned: servers never accept an unknown host key)."""
    keys = [public_key(CONTROLLER_KEY)]
    hosts = []
    for n in numbers:
        folder = SERVERS_DIR / f"srv{n}"
        keys.append(public_key(folder / "lib" / ".ssh" / "id_ed25519"))
        host_key = " ".join(public_key(folder / "ssh" / "ssh_host_ed25519_key").split()[:2])
        name = server_address(n) if SSH_PORT == 22 else f"[{server_address(n)}]:{SSH_PORT}"
        hosts.append(f"{name},srv{n}.{ZONE} {host_key}")
    replication = ensure_secret("replication_password")
    probe = ensure_secret("pg_password")
    # The controller's own pgpass, for benchmarks' pgbench and psql against lab instances.
    controller_pgpass = SECRETS_DIR / "pgpass"
    controller_pgpass.write_text(f"*:*:*:elephaas:{probe}\n")
    os.chmod(controller_pgpass, 0o600)
    for n in numbers:
        home = SERVERS_DIR / f"srv{n}" / "lib"
        files = {
            home / ".ssh" / "authorized_keys": "\n".join(keys) + "\n",
            home / ".ssh" / "known_hosts": "\n".join(hosts) + "\n",
            home / ".ssh" / "config": "StrictHostKeyChecking yes\nBatchMode yes\n",
            home / ".pgpass": f"*:*:*:replicator:{replication}\n*:*:*:elephaas:{probe}\n",
        }
        for path, text in files.items():
            path.write_text(text)
            os.chmod(path, 0o600)
            chown_postgres(path)
    CONTROLLER_DIR.mkdir(exist_ok=True)
    (CONTROLLER_DIR / "known_hosts").write_text("\n".join(hosts) + "\n")


def stop_server(number: int) -> None:
    pid = proc.running_from(sshd_pidfile(number))
    if pid:
        proc.stop_pid(pid, f"sshd for srv{number}")
    server_ns(number).stop()


# --- metadata database -------------------------------------------------------------------------


def meta_ns() -> Namespace:
    return Namespace("meta", META_DIR)


def ensure_meta() -> None:
    version = pg_version()
    ns = meta_ns()
    ns.ensure()
    if not cluster_running(ns, version, "meta"):
        proc.require_port(
            META_ADDRESS,
            META_PORT,
            "the metadata PostgreSQL",
            "set LAB_META_PORT to use another port",
        )
    create_cluster(
        ns,
        version,
        "meta",
        META_PORT,
        META_ADDRESS,
        {
            "max_connections": str(PROFILE.meta_connections),
            "shared_buffers": "'128MB'",
            "fsync": "on",
        },
        [f"host all elephaas {META_ADDRESS}/32 scram-sha-256"],
    )
    start_cluster(ns, version, "meta")
    password = ensure_secret("metadb_password")
    psql(
        ns,
        META_PORT,
        f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'elephaas') THEN
    CREATE ROLE elephaas LOGIN CREATEDB;
  END IF;
END $$;
ALTER ROLE elephaas PASSWORD {sql_literal(password)};
""",
    )
    if psql(ns, META_PORT, "SELECT 1 FROM pg_database WHERE datname = 'elephaas'") != "1":
        psql(ns, META_PORT, "CREATE DATABASE elephaas OWNER elephaas")


# --- Redis ---------------------------------------------------------------------------------------


def ensure_redis() -> None:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    pidfile = REDIS_DIR / "redis.pid"
    if proc.running_from(pidfile):
        return
    proc.require_port("127.0.0.1", REDIS_PORT, "Redis", "set LAB_REDIS_PORT")
    proc.run(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(REDIS_PORT),
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--dir",
            str(REDIS_DIR),
            "--logfile",
            str(LOG_DIR / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
    )
    proc.wait_port("127.0.0.1", REDIS_PORT, "Redis")
    _wait_pidfile(pidfile, "Redis")


def _wait_pidfile(pidfile: Path, what: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = proc.running_from(pidfile)
        if pid:
            return pid
        time.sleep(0.05)
    raise LabError(f"{what} started but wrote no pid file at {pidfile}")


# --- BIND ----------------------------------------------------------------------------------------


def tsig_keyfile() -> Path:
    secret = ensure_secret("tsig_secret", 32, b64=True)
    path = SECRETS_DIR / "tsig.key"
    path.write_text(f'key "{TSIG_NAME}" {{\n  algorithm hmac-sha256;\n  secret "{secret}";\n}};\n')
    os.chmod(path, 0o600)
    return path


def ensure_dns(numbers: list[int]) -> None:
    DNS_DIR.mkdir(parents=True, exist_ok=True)
    pidfile = DNS_DIR / "named.pid"
    keyfile = tsig_keyfile()
    zone_file = DNS_DIR / f"{ZONE}.zone"
    if not zone_file.exists():
        zone_file.write_text(
            "\n".join(
                [
                    "$TTL 60",
                    f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 3600 60",
                    f"@ IN NS ns.{ZONE}.",
                    "ns IN A 127.0.0.1",
                    "",
                ]
            )
        )
    conf = DNS_DIR / "named.conf"
    conf.write_text(f"""// written by the ElepHaaS lab
options {{
  directory "{DNS_DIR}";
  pid-file "{pidfile}";
  session-keyfile "{DNS_DIR}/session.key";
  managed-keys-directory "{DNS_DIR}";
  listen-on port {DNS_PORT} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  allow-query {{ 127.0.0.0/8; }};
  allow-transfer {{ none; }};
  dnssec-validation no;
}};
controls {{ }};
include "{keyfile}";
zone "{ZONE}" {{
  type primary;
  file "{zone_file}";
  allow-update {{ key "{TSIG_NAME}"; }};
}};
""")
    if not proc.running_from(pidfile):
        proc.require_port("127.0.0.1", DNS_PORT, "BIND", "set LAB_DNS_PORT")
        proc.run(["named-checkconf", str(conf)])
        proc.run(["named", "-c", str(conf), "-L", str(LOG_DIR / "named.log")])
        _wait_pidfile(pidfile, "BIND")
        proc.wait_port("127.0.0.1", DNS_PORT, "BIND")
    script = [f"server 127.0.0.1 {DNS_PORT}", f"zone {ZONE}"]
    for n in numbers:
        script += [
            f"update delete srv{n}.{ZONE} A",
            f"update add srv{n}.{ZONE} 60 A {server_address(n)}",
        ]
    script += ["send", ""]
    proc.run(["nsupdate", "-k", str(keyfile)], input="\n".join(script))


# --- slapd ---------------------------------------------------------------------------------------


def ssha(password: str) -> str:
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def ldap_users() -> dict[str, dict[str, str]]:
    path = SECRETS_DIR / "ldap_users.json"
    if path.exists():
        return json.loads(path.read_text())
    users = {
        uid: {
            "password": secrets.token_urlsafe(12),
            "name": name,
            "group": group,
            "dn": f"uid={uid},ou=people,{LDAP_BASE}",
        }
        for uid, (name, group) in LDAP_USERS.items()
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(users, out, indent=2)
    return users


def ensure_ldap() -> None:
    data = LDAP_DIR / "data"
    data.mkdir(parents=True, exist_ok=True)
    pidfile = LDAP_DIR / "slapd.pid"
    admin_pw = ensure_secret("ldap_admin_password")
    service_pw = ensure_secret("ldap_service_password")
    conf = LDAP_DIR / "slapd.conf"
    conf.write_text(f"""# written by the ElepHaaS lab
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {pidfile}
argsfile {LDAP_DIR / "slapd.args"}
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 104857600
suffix "{LDAP_BASE}"
rootdn "cn=admin,{LDAP_BASE}"
rootpw {ssha(admin_pw)}
directory {data}
index objectClass eq
index uid eq
index member eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
""")
    os.chmod(conf, 0o600)
    if not (data / "data.mdb").exists():
        users = ldap_users()
        entries = [
            f"dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\n"
            "o: ElepHaaS lab\ndc: elephaas",
            f"dn: ou=people,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: people",
            f"dn: ou=groups,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: groups",
            f"dn: ou=services,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: services",
            f"dn: uid=elephaas,ou=services,{LDAP_BASE}\nobjectClass: account\n"
            f"objectClass: simpleSecurityObject\nuid: elephaas\nuserPassword: {ssha(service_pw)}",
        ]
        for index, (uid, user) in enumerate(sorted(users.items())):
            given, _, surname = user["name"].partition(" ")
            entries.append(
                f"dn: {user['dn']}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
                f"uid: {uid}\ncn: {user['name']}\ngivenName: {given}\nsn: {surname or given}\n"
                f"mail: {uid}@elephaas.test\nuidNumber: {20001 + index}\ngidNumber: 20000\n"
                f"homeDirectory: /home/{uid}\nuserPassword: {ssha(user['password'])}"
            )
        for group in LDAP_GROUPS:
            members = [u["dn"] for u in users.values() if u["group"] == group]
            lines = [
                f"dn: cn={group},ou=groups,{LDAP_BASE}",
                "objectClass: groupOfNames",
                f"cn: {group}",
            ] + [f"member: {m}" for m in members or [f"cn=admin,{LDAP_BASE}"]]
            entries.append("\n".join(lines))
        proc.run(["slapadd", "-f", str(conf), "-q"], input="\n\n".join(entries) + "\n")
    if proc.running_from(pidfile):
        return
    proc.require_port("127.0.0.1", LDAP_PORT, "slapd", "set LAB_LDAP_PORT")
    proc.run(["slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{LDAP_PORT}/"])
    _wait_pidfile(pidfile, "slapd")
    proc.wait_port("127.0.0.1", LDAP_PORT, "slapd")


# --- the environment file ----------------------------------------------------------------------


def write_env_file() -> None:
    ensure_secret("secret_key", 48)
    ensure_secret("demo_admin_password", 12)
    values = {
        "ELEPHAAS_SECRET_KEY_FILE": SECRETS_DIR / "secret_key",
        "ELEPHAAS_DB_HOST": META_ADDRESS,
        "ELEPHAAS_DB_PORT": META_PORT,
        "ELEPHAAS_DB_NAME": "elephaas",
        "ELEPHAAS_DB_USER": "elephaas",
        "ELEPHAAS_DB_PASSWORD_FILE": SECRETS_DIR / "metadb_password",
        "ELEPHAAS_BROKER_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
        "ELEPHAAS_SSH_KEY": CONTROLLER_KEY,
        "ELEPHAAS_SSH_USER": "postgres",
        "ELEPHAAS_SSH_PORT": SSH_PORT,
        "ELEPHAAS_PG_USER": "elephaas",
        "ELEPHAAS_PG_PASSWORD_FILE": SECRETS_DIR / "pg_password",
        "ELEPHAAS_DNS_SERVER": "127.0.0.1",
        "ELEPHAAS_DNS_PORT": DNS_PORT,
        "ELEPHAAS_DNS_ZONE": f"{ZONE}.",
        "ELEPHAAS_DNS_TSIG_NAME": TSIG_NAME,
        "ELEPHAAS_DNS_TSIG_ALGORITHM": "hmac-sha256",
        "ELEPHAAS_DNS_TSIG_SECRET_FILE": SECRETS_DIR / "tsig_secret",
        # Lab servers are known by address, so vhosts are A records (a CNAME needs a name).
        "ELEPHAAS_DNS_RECORD_TYPE": "A",
        "ELEPHAAS_LDAP_URI": f"ldap://127.0.0.1:{LDAP_PORT}",
        "ELEPHAAS_LDAP_BIND_DN": f"uid=elephaas,ou=services,{LDAP_BASE}",
        "ELEPHAAS_LDAP_BIND_PASSWORD_FILE": SECRETS_DIR / "ldap_service_password",
        "ELEPHAAS_LDAP_USER_BASE": f"ou=people,{LDAP_BASE}",
        "ELEPHAAS_LDAP_GROUP_BASE": f"ou=groups,{LDAP_BASE}",
    }
    if PROFILE.worker_concurrency != 16:
        # So that what reads the settings (benchmarks) knows the lab worker's threads.
        values["ELEPHAAS_WORKER_CONCURRENCY"] = PROFILE.worker_concurrency
    lines = ["# written by `python -m lab up`: the lab's addresses and secret files"]
    lines += [f"{key}={value}" for key, value in values.items()]
    ENV_FILE.write_text("\n".join(lines) + "\n")
    os.chmod(ENV_FILE, 0o600)


# --- Django: migrations, worker, web -----------------------------------------------------------


def django_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")
    env["ELEPHAAS_ENV_FILE"] = str(ENV_FILE)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def manage(*args: str, input: str | None = None) -> str:
    done = proc.run(
        [sys.executable, str(REPO_DIR / "manage.py"), *args],
        env=django_env(),
        cwd=REPO_DIR,
        input=input,
        timeout=600,
    )
    return done.stdout


def worker_argv(hostname: str, concurrency: int, queues: str | None = None) -> list[str]:
    """A Celery worker as ElepHaaS runs it (the Debian unit builds the same argv)."""
    return service.worker_argv(hostname, concurrency, queues)


def worker_pidfile() -> Path:
    return CELERY_DIR / "worker.pid"


def restart_worker() -> int:
    """The demo's worker: restarted on every `up` so that it runs the checked-out code."""
    CELERY_DIR.mkdir(parents=True, exist_ok=True)
    pid = proc.running_from(worker_pidfile())
    if pid:
        proc.stop_pid(pid, "Celery worker", timeout=30)
    concurrency = int(os.environ.get("ELEPHAAS_WORKER_CONCURRENCY") or PROFILE.worker_concurrency)
    argv = worker_argv("lab@%h", concurrency)
    pid = proc.spawn(
        argv, worker_pidfile(), LOG_DIR / "celery-worker.log", env=django_env(), cwd=REPO_DIR
    )
    return pid


def beat_pidfile() -> Path:
    return CELERY_DIR / "beat.pid"


def restart_controllers() -> list[str]:
    """The other controllers of the profile (lab/controller.py), each a worker on a host
    of its own, restarted on every `up` like the first so that they run the checked-out
    code. Returns their names."""
    from . import controller

    names = []
    for number in range(2, PROFILE.controllers + 1):
        name = f"controller-{number}"
        host = controller.start_host(name, 200 + number)
        concurrency = int(
            os.environ.get("ELEPHAAS_WORKER_CONCURRENCY") or PROFILE.worker_concurrency
        )
        controller.start_worker(
            host, worker_argv("lab@%h", concurrency), django_env(), LOG_DIR / f"{name}-worker.log"
        )
        names.append(name)
    return names


def stop_controllers() -> None:
    from . import controller

    for name, _holder in controller.running():
        number = name.rsplit("-", 1)[-1]
        controller.stop_host(name, 200 + int(number) if number.isdigit() else 0)


def restart_beat() -> int:
    """Celery beat: the periodic health poll and the lost-job reaper."""
    CELERY_DIR.mkdir(parents=True, exist_ok=True)
    pid = proc.running_from(beat_pidfile())
    if pid:
        proc.stop_pid(pid, "Celery beat", timeout=30)
    argv = service.beat_argv(str(CELERY_DIR / "beat-schedule"))
    return proc.spawn(
        argv, beat_pidfile(), LOG_DIR / "celery-beat.log", env=django_env(), cwd=REPO_DIR
    )


def web_pidfile() -> Path:
    return WEB_DIR / "web.pid"


def start_web() -> int:
    WEB_DIR.mkdir(parents=True, exist_ok=True)
    pid = proc.running_from(web_pidfile())
    if pid:
        proc.stop_pid(pid, "web admin")
    proc.require_port("127.0.0.1", WEB_PORT, "the web admin", "set LAB_WEB_PORT")
    argv = [
        sys.executable,
        str(REPO_DIR / "manage.py"),
        "runserver",
        "--noreload",
        "--insecure",
        f"127.0.0.1:{WEB_PORT}",
    ]
    pid = proc.spawn(argv, web_pidfile(), LOG_DIR / "web.log", env=django_env(), cwd=REPO_DIR)
    proc.wait_port("127.0.0.1", WEB_PORT, "the web admin", timeout=30)
    return pid


# --- up / down / status --------------------------------------------------------------------------


def up(servers: int | None = None, worker: bool = True, jobs: int = 4) -> None:
    """Bring the lab up, idempotently. The scale profile also builds its fleet of herds
    (lab/scale.py), `jobs` herds at a time."""
    preflight()
    started = time.monotonic()
    servers = servers or PROFILE.servers
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(LAB_DIR, 0o755)
    record_profile()
    LOG_DIR.mkdir(exist_ok=True)
    UP_MARK.unlink(missing_ok=True)
    # sshd refuses key logins to a locked account ('!' in the password field).
    shadow = proc.run(["getent", "shadow", "postgres"]).stdout.split(":")
    if len(shadow) > 1 and shadow[1].startswith("!"):
        proc.run(["usermod", "-p", "*", "postgres"])
    ensure_keypair(CONTROLLER_KEY, "elephaas-controller")
    numbers = sorted(set(range(1, servers + 1)) | set(_known_servers()))
    for n in numbers:
        ensure_server(n)
    write_trust(numbers)
    # Servers boot side by side (a scale lab's 200 clusters one by one took a minute).
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="boot") as pool:
        list(pool.map(boot_clusters, numbers))
    say(f"{len(numbers)} servers: " + ", ".join(server_address(n) for n in numbers))
    ensure_meta()
    say(f"metadata PostgreSQL on {META_ADDRESS}:{META_PORT}")
    ensure_redis()
    ensure_dns(numbers)
    ensure_ldap()
    say(f"Redis :{REDIS_PORT}, BIND :{DNS_PORT} (zone {ZONE}), slapd :{LDAP_PORT}")
    write_env_file()
    manage("migrate", "--no-input")
    if PROFILE.name == "scale":
        from . import scale

        seconds = scale.build(max(numbers), jobs)
        say(f"scale fleet: {len(scale.layout(max(numbers)))} herds, built in {seconds:.1f}s")
    if worker:
        restart_worker()
        restart_beat()
        say(f"Celery worker and beat (logs in {LOG_DIR})")
        others = restart_controllers()
        if others:
            say(f"other controllers, each a worker on a host of its own: {', '.join(others)}")
    sides = split_cores(numbers)
    if sides:
        say(f"cores: the controllers on {sides['controllers']}, the fleet on {sides['fleet']}")
    UP_MARK.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    say(f"up in {time.monotonic() - started:.1f}s; state in {LAB_DIR} ({PROFILE.name} profile)")
    if PROFILE.name == "scale":
        from . import scale

        say("memory: " + scale.describe_memory(scale.memory()))


def _known_servers() -> list[int]:
    from .state import server_numbers

    return server_numbers()


def services() -> list[tuple[str, Path]]:
    """Processes with a pid file of their own, in the order `down` stops them."""
    return [
        ("web admin", web_pidfile()),
        ("Celery beat", beat_pidfile()),
        ("Celery worker", worker_pidfile()),
        ("slapd", LDAP_DIR / "slapd.pid"),
        ("BIND", DNS_DIR / "named.pid"),
        ("Redis", REDIS_DIR / "redis.pid"),
    ]


def components() -> list[tuple[str, Path]]:
    items = services() + [("metadata namespace", meta_ns().holder_pidfile)]
    for n in _known_servers():
        items.append((f"srv{n} sshd", sshd_pidfile(n)))
        items.append((f"srv{n} namespace", server_ns(n).holder_pidfile))
    return items


def down() -> None:
    preflight()
    UP_MARK.unlink(missing_ok=True)
    stop_controllers()
    for name, pidfile in services():
        pid = proc.running_from(pidfile)
        if pid:
            proc.stop_pid(pid, name, timeout=30)
        pidfile.unlink(missing_ok=True)
    meta_ns().stop()
    for n in _known_servers():
        stop_server(n)
    left = leftovers()
    if left:
        raise LabError("still running after down: " + ", ".join(left))
    remove_cpusets()
    say("down: no lab process is running")


def leftovers() -> list[str]:
    from . import controller

    left = [f"{name} (pid {proc.read_pid(p)})" for name, p in components() if proc.running_from(p)]
    left += [f"controller {name} (pid {holder})" for name, holder in controller.running()]
    for ns in [meta_ns()] + [server_ns(n) for n in _known_servers()]:
        left += [f"pid {pid} in {ns.name}'s namespace" for pid in ns.leftover_pids()]
        left += [f"postgres {pf.parent}" for pf, _pid in ns.postmaster_pids()]
    return left


def status() -> bool:
    from . import scale

    all_up = True
    print(f"{'profile':22} {PROFILE.name}, servers at {ADDRESS_PREFIX}.N, state in {LAB_DIR}")
    for name, pidfile in components():
        pid = proc.running_from(pidfile)
        all_up &= bool(pid) or name == "web admin"
        print(f"{name:22} {'running, pid ' + str(pid) if pid else 'stopped'}")
    for ns in [meta_ns()] + [server_ns(n) for n in _known_servers()]:
        if not ns.holder():
            continue
        for version, name, port in ns.clusters():
            state = "online" if cluster_running(ns, version, name) else "down"
            print(f"{ns.name + ' pg ' + version + '/' + name:22} port {port}, {state}")
    from . import controller

    for name, holder in controller.running():
        print(f"{name:22} running, {len(controller.pids(holder))} processes on its own host")
    print(f"{'memory':22} {scale.describe_memory(scale.memory())}")
    return all_up
