"""Where the lab keeps its state, and read-only views of it for tests and benchmarks.

A lab is one folder (LAB_DIR) and one profile: `default` (4 servers at 127.0.1.N, the
services on their usual ports) or `scale` (dozens of servers at 127.0.2.N with hundreds of
small instances, its services on ports of its own), so that both can run on one machine at
once. `python -m lab up` records the profile, the address prefix and the ports in
LAB_DIR/lab.json; whatever later reads that folder (`LAB_DIR=.lab-scale python bench/…`)
gets the same values without being told. An environment variable (LAB_ADDRESS_PREFIX,
LAB_META_PORT, …) still overrides what was recorded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import LabError

REPO_DIR = Path(__file__).resolve().parent.parent
__all__ = ["LabError"]  # re-exported: the lab's modules import it from here


@dataclass(frozen=True)
class Profile:
    """What tells one lab from another on the same machine."""

    name: str
    lab_dir: str  # relative to the repository unless absolute
    address_prefix: str  # servers are <prefix>.1, <prefix>.2, …
    meta_port: int
    redis_port: int
    dns_port: int
    ldap_port: int
    web_port: int
    servers: int  # how many servers `up` brings when not told
    # Each lab worker's threads. The scale lab's campaigns run 20 herds at once and its
    # bulk actions 100 jobs: with 16 threads a 20-herd campaign took 1.40x its floor
    # (bench_scale_campaign). Each running job holds two metadata sessions.
    worker_concurrency: int = 16
    # Controllers, each a Celery worker of worker_concurrency threads: the first on the
    # lab's host, the others on hosts of their own (lab/controller.py).
    controllers: int = 1
    # The metadata database's max_connections: two sessions per running job and worker
    # thread, and the benchmarks', tests' and web's own.
    meta_connections: int = 200
    # The machine's cores split in two, as if the fleet and the controllers were machines
    # of their own: the servers' processes (sshd and all it starts, PostgreSQL) on the
    # upper half, the controllers (workers, beat, metadata database, broker) on the lower
    # (cgroup v1 cpusets). Shared, 200 clusters restarting at once starved the controllers
    # (every SSH session is a scheduling group of its own, so nice does not help), and
    # the controllers' CPU was taken from the restarts, which it is not on a real fleet.
    split_cores: bool = False


PROFILES = {
    "default": Profile("default", ".lab", "127.0.1", 54329, 6390, 5300, 3389, 8000, 4),
    # Two controllers of 64 threads: a bulk action of 100 restarts ran in two waves with
    # 64 threads in all, 1.41x the same commands by hand (bench_scale_restart).
    "scale": Profile(
        "scale",
        ".lab-scale",
        "127.0.2",
        54339,
        6391,
        5301,
        3390,
        8001,
        40,
        worker_concurrency=64,
        controllers=2,
        meta_connections=400,
        split_cores=True,
    ),
}
# Which environment variable overrides which field.
OVERRIDES = {
    "address_prefix": "LAB_ADDRESS_PREFIX",
    "meta_port": "LAB_META_PORT",
    "redis_port": "LAB_REDIS_PORT",
    "dns_port": "LAB_DNS_PORT",
    "ldap_port": "LAB_LDAP_PORT",
    "web_port": "LAB_WEB_PORT",
}
# Loopback only: lab servers are addresses nobody configures, which only 127/8 gives.
PREFIX_RE = re.compile(r"^127\.(25[0-5]|2[0-4]\d|1?\d?\d)\.(25[0-5]|2[0-4]\d|1?\d?\d)$")


def _lab_dir(profile: Profile) -> Path:
    # LAB_DIR as given is relative to where the command runs (as it always was); a
    # profile's own folder is relative to the repository.
    if os.environ.get("LAB_DIR"):
        return Path(os.environ["LAB_DIR"]).resolve()
    return (REPO_DIR / profile.lab_dir).resolve()


def _recorded(lab_dir: Path) -> dict:
    try:
        return json.loads((lab_dir / "lab.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LabError(f"{lab_dir / 'lab.json'} is unreadable ({exc}): remove it") from None


def load() -> tuple[Profile, Path]:
    """The profile in force and the lab folder, from LAB_PROFILE, LAB_DIR, the folder's
    lab.json and the override variables, in that order of precedence (overrides last)."""
    asked = os.environ.get("LAB_PROFILE", "")
    if asked and asked not in PROFILES:
        raise LabError(f"unknown lab profile {asked!r}: use one of {', '.join(PROFILES)}")
    lab_dir = _lab_dir(PROFILES[asked or "default"])
    recorded = _recorded(lab_dir)
    if asked and recorded and recorded.get("name") != asked:
        raise LabError(
            f"{lab_dir} holds a {recorded.get('name')!r} lab, not {asked!r}: "
            "use another LAB_DIR, or the profile it was made with"
        )
    profile = PROFILES[asked or recorded.get("name", "default")]
    known = {f.name for f in fields(Profile)} - {"name", "lab_dir"}
    profile = replace(profile, **{k: v for k, v in recorded.items() if k in known})
    for field, variable in OVERRIDES.items():
        if os.environ.get(variable):
            raw = os.environ[variable]
            value = raw if field == "address_prefix" else int(raw)
            profile = replace(profile, **{field: value})
    if not PREFIX_RE.match(profile.address_prefix):
        raise LabError(
            f"address prefix {profile.address_prefix!r}: use three octets of 127/8 "
            "(e.g. 127.0.2): lab servers live on loopback addresses"
        )
    return profile, lab_dir


PROFILE, LAB_DIR = load()
ADDRESS_PREFIX = PROFILE.address_prefix
SERVERS_DIR = LAB_DIR / "servers"
SECRETS_DIR = LAB_DIR / "secrets"
ENV_FILE = LAB_DIR / "elephaas.env"


def record_profile() -> None:
    """Write lab.json: what later commands and benchmarks pointed at this folder use."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    skip = ("lab_dir", "servers", "worker_concurrency", "controllers", "meta_connections")
    values = {k: v for k, v in asdict(PROFILE).items() if k not in skip}
    (LAB_DIR / "lab.json").write_text(json.dumps(values, indent=2) + "\n")


@dataclass(frozen=True)
class LabServer:
    """One lab server as ElepHaaS sees it: same attribute names as the Server model."""

    name: str
    number: int
    hostname: str
    ssh_port: int
    ssh_user: str
    host_key_type: str
    host_key: str
    host_key_fingerprint: str

    @property
    def folder(self) -> Path:
        return SERVERS_DIR / self.name

    def inventory_fields(self) -> dict:
        """The fields of a Server row for this lab server, its host key pinned from what
        the lab generated (as a DBA would after checking the fingerprint)."""
        return {
            "hostname": self.hostname,
            "ssh_port": self.ssh_port,
            "ssh_user": self.ssh_user,
            "host_key_type": self.host_key_type,
            "host_key": self.host_key,
            "host_key_fingerprint": self.host_key_fingerprint,
        }


def server_numbers() -> list[int]:
    if not SERVERS_DIR.is_dir():
        return []
    found = []
    for entry in SERVERS_DIR.iterdir():
        if entry.name.startswith("srv") and entry.name[3:].isdigit():
            found.append(int(entry.name[3:]))
    return sorted(found)


def servers() -> list[LabServer]:
    """The lab's servers, from the server.json each writes when it is set up."""
    result = []
    for number in server_numbers():
        path = SERVERS_DIR / f"srv{number}" / "server.json"
        if path.exists():
            result.append(LabServer(**json.loads(path.read_text())))
    return result


def secret(name: str) -> str:
    path = SECRETS_DIR / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise LabError(f"lab secret {path} is missing: run `python -m lab up`") from None


def is_up() -> bool:
    return (LAB_DIR / "up.ok").exists()
