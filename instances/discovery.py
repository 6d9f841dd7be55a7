"""Discovery, the pure part: read what a server reports about its clusters.

No I/O here: these functions turn the text that `pg_lsclusters` or `ps` printed into
plain records (conninfo strings are read by instances.conninfo). The operation in
servers.py runs the commands and writes the inventory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from instances.conninfo import parse_conninfo


@dataclass(frozen=True)
class FoundCluster:
    version: int
    name: str
    port: int
    data_dir: str
    running: bool
    in_recovery: bool | None  # None: could not tell from the listing
    primary_conninfo: str = ""

    @property
    def upstream(self) -> tuple[str, int] | None:
        """(host, port) this cluster streams from, read from its primary_conninfo.

        None for a primary: a promoted replica keeps its primary_conninfo (promotion does
        not remove it), and following it put a herd switched over and back by a site drill
        into the environment of its DR copy (a second herd of the same name there).
        """
        if not self.primary_conninfo or self.in_recovery is False:
            return None
        info = parse_conninfo(self.primary_conninfo)
        host = info.get("host") or info.get("hostaddr")
        if not host:
            return None
        try:
            return host.split(",")[0], int(info.get("port", "5432").split(",")[0])
        except ValueError:
            return None


class DiscoveryParseError(ValueError):
    pass


def parse_lsclusters_json(text: str) -> list[FoundCluster]:
    try:
        items = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise DiscoveryParseError(f"pg_lsclusters --json printed invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise DiscoveryParseError("pg_lsclusters --json did not print a list")
    found = []
    for item in items:
        try:
            config = item.get("config") or {}
            found.append(
                FoundCluster(
                    version=int(float(item["version"])),
                    name=str(item["cluster"]),
                    port=int(item["port"]),
                    data_dir=str(item.get("pgdata") or config.get("data_directory") or ""),
                    running=bool(int(item.get("running") or 0)),
                    in_recovery=bool(int(item.get("recovery") or 0)),
                    primary_conninfo=str(config.get("primary_conninfo") or ""),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DiscoveryParseError(f"pg_lsclusters --json: unexpected entry ({exc})") from None
    return found


def parse_lsclusters_text(text: str) -> list[FoundCluster]:
    """Older postgresql-common without --json: `Ver Cluster Port Status Owner Data Log`."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0].replace(".", "").isdigit():
            continue
        status = parts[3].split(",")
        found.append(
            FoundCluster(
                version=int(float(parts[0])),
                name=parts[1],
                port=int(parts[2]),
                data_dir=parts[5],
                running="online" in status,
                in_recovery="recovery" in status,
            )
        )
    return found


@dataclass(frozen=True)
class Postmaster:
    pid: int
    data_dir: str
    port: int
    version: int


def find_postmasters(ps_output: str) -> list[int]:
    """Pids of postmasters in `ps -eo pid=,ppid=,comm=` output: postgres processes whose
    parent is not itself a postgres process (backends are children of the postmaster)."""
    procs: dict[int, tuple[int, str]] = {}
    for line in ps_output.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            procs[int(parts[0])] = (int(parts[1]), parts[2].strip())
    names = {"postgres", "postmaster"}
    return sorted(
        pid
        for pid, (ppid, comm) in procs.items()
        if comm in names and procs.get(ppid, (0, ""))[1] not in names
    )


def parse_postmaster_report(text: str) -> list[Postmaster]:
    """Lines `pid<TAB>data_dir<TAB>PG_VERSION<TAB>port` printed by operations' ps fallback."""
    found = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        try:
            found.append(Postmaster(int(parts[0]), parts[1], int(parts[3]), int(float(parts[2]))))
        except ValueError:
            continue
    return found
