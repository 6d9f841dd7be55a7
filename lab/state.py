"""Where the lab keeps its state, and read-only views of it for tests and benchmarks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
LAB_DIR = Path(os.environ.get("LAB_DIR", REPO_DIR / ".lab")).resolve()
SERVERS_DIR = LAB_DIR / "servers"
SECRETS_DIR = LAB_DIR / "secrets"
ENV_FILE = LAB_DIR / "elephaas.env"


class LabError(Exception):
    """A lab problem a person can act on; the message says what and what to do."""


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
