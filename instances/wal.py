"""WAL positions and sizes: LSN arithmetic and byte formatting. Pure, no I/O.

The one place where an LSN becomes a number and a number of bytes (or a replica's lag in
seconds) becomes text, so that a plan, a job summary, a drill, an admin column and a
picture all say "18.0 MB" the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LSN_RE = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\Z")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_UNITS = ("kB", "MB", "GB", "TB")


def lsn_to_int(lsn: str | None) -> int | None:
    """'16/B374D848' → bytes since the start of WAL, as PostgreSQL compares and subtracts
    them; None for blank or None. Raises ValueError for anything else."""
    if not lsn:
        return None
    if not isinstance(lsn, str) or not _LSN_RE.match(lsn):
        raise ValueError(f"not an LSN: {str(lsn)[:40]!r}")
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    """The inverse of lsn_to_int: 0x16_B374D848 → '16/B374D848'."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"an LSN is a 64-bit position, not {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def bytes_between(ahead: str | None, behind: str | None) -> int | None:
    """How many bytes `behind` trails `ahead` (never negative: the two are read at slightly
    different moments); None when either is unknown or unreadable."""
    try:
        a, b = lsn_to_int(ahead), lsn_to_int(behind)
    except ValueError:
        return None
    if a is None or b is None:
        return None
    return max(0, a - b)


def format_bytes(value: int) -> str:
    """0 → '0 bytes', 1023 → '1023 bytes', 18874368 → '18.0 MB', up to TB."""
    if abs(value) < 1024:
        return f"{int(value)} bytes"
    size = float(value)
    for unit in _UNITS:
        size /= 1024
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def format_seconds(value: float) -> str:
    """A replica's lag in time: 40 → '40 s', 600 → '10 min', 10800 → '3 h'."""
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.0f} h"


def wal_segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The position of a WAL file name (TTTTTTTTXXXXXXXXYYYYYYYY) in the WAL, ignoring its
    timeline: comparable with `lsn // segment_size`."""
    if not re.fullmatch(r"[0-9A-F]{24}", name):
        raise ValueError(f"not a WAL segment file name: {name!r}")
    per_xlogid = 0x100000000 // segment_size
    return int(name[8:16], 16) * per_xlogid + int(name[16:24], 16)


@dataclass(frozen=True)
class EndOfWal:
    """Where a stopped cluster's WAL ends (the first byte not written), on which timeline,
    in segments of which size: what a salvage copies up to."""

    lsn: int
    timeline: int
    segment_size: int = DEFAULT_SEGMENT_SIZE

    def segments_from(self, start: int) -> list[str]:
        return segments_between(self.timeline, start, self.lsn, self.segment_size)


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The WAL file holding byte `lsn` on `timeline`: TTTTTTTTXXXXXXXXYYYYYYYY."""
    if not 1 <= timeline <= 0xFFFFFFFF:
        raise ValueError(f"not a timeline: {timeline!r}")
    if segment_size <= 0 or segment_size & (segment_size - 1) or segment_size > 1 << 30:
        raise ValueError(f"not a WAL segment size: {segment_size!r}")
    if lsn < 0 or lsn >= 1 << 64:
        raise ValueError(f"an LSN is a 64-bit position, not {lsn}")
    per_xlogid = 0x100000000 // segment_size
    number = lsn // segment_size
    return f"{timeline:08X}{number // per_xlogid:08X}{number % per_xlogid:08X}"


def segments_between(
    timeline: int, start: int, end: int, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> list[str]:
    """The WAL files of `timeline` that hold the bytes [start, end): what a replica at
    `start` lacks of a WAL ending at `end` (the first byte not written). Empty when it
    lacks nothing."""
    if end <= start:
        return []
    first, last = start // segment_size, (end - 1) // segment_size
    return [segment_name(timeline, n * segment_size, segment_size) for n in range(first, last + 1)]
