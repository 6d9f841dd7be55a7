"""pg_controldata: what a data directory's control file says. Pure, no I/O.

Read by the switchover (the old primary's final checkpoint) and by rebuild (system
identifier, timeline, checksums): one parser for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from instances.wal import DEFAULT_SEGMENT_SIZE, lsn_to_int


class ParseError(ValueError):
    pass


@dataclass(frozen=True)
class ControlData:
    system_identifier: str
    state: str  # "shut down", "shut down in recovery", "in production", …
    checksum_version: int
    wal_log_hints: bool
    checkpoint_lsn: int | None  # Latest checkpoint location
    redo_lsn: int | None  # Latest checkpoint's REDO location
    timeline: int | None  # Latest checkpoint's TimeLineID
    segment_size: int

    @property
    def shut_down_cleanly(self) -> bool:
        """A primary's clean stop: its shutdown checkpoint is the last WAL it wrote."""
        return self.state == "shut down"

    @property
    def rewindable(self) -> bool:
        """pg_rewind needs to see every changed page: checksums or wal_log_hints."""
        return self.checksum_version > 0 or self.wal_log_hints


def parse_controldata(text: str) -> ControlData:
    """Parse `LC_ALL=C pg_controldata` output (English labels)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    sysid = fields.get("Database system identifier", "")
    if not sysid.isdigit():
        raise ParseError("pg_controldata printed no database system identifier")
    try:
        checksums = int(fields.get("Data page checksum version", "0"))
        segment = int(fields.get("Bytes per WAL segment", str(DEFAULT_SEGMENT_SIZE)))
        timeline_text = fields.get("Latest checkpoint's TimeLineID", "")
        timeline = int(timeline_text) if timeline_text else None
    except ValueError as exc:
        raise ParseError(f"pg_controldata: unexpected number ({exc})") from None

    def lsn(label: str) -> int | None:
        text = fields.get(label, "")
        try:
            return lsn_to_int(text)
        except ValueError:
            return None

    return ControlData(
        system_identifier=sysid,
        state=fields.get("Database cluster state", "unknown"),
        checksum_version=checksums,
        wal_log_hints=fields.get("wal_log_hints setting", "off") == "on",
        checkpoint_lsn=lsn("Latest checkpoint location"),
        redo_lsn=lsn("Latest checkpoint's REDO location"),
        timeline=timeline,
        segment_size=segment,
    )
