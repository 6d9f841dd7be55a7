"""Where a stopped cluster's WAL ends, from what pg_waldump says when it stops. Pure.

pg_waldump, run from the last checkpoint's REDO point, reads records until the first one
that is not valid and says why and where. That place is the end of the WAL the server
wrote: every commit it acknowledged lies before it (acknowledged means flushed, and a
killed process leaves its written WAL in the page cache). Only the messages below are
understood; anything else means the end is not known.
"""

from __future__ import annotations

import re

from instances.wal import DEFAULT_SEGMENT_SIZE, lsn_to_int, wal_segment_number

_LSN = r"([0-9A-F]+/[0-9A-F]+)"
# The next record would start here, and what is there is not a record.
_AT_LSN = (
    re.compile(rf"invalid record length at {_LSN}"),
    re.compile(rf"record with incorrect prev-link {_LSN[1:-1]} at {_LSN}"),
    re.compile(rf"record length \d+ at {_LSN} too long"),
    re.compile(rf"invalid resource manager ID \d+ at {_LSN}"),
    re.compile(rf"incorrect resource manager data checksum in record at {_LSN}"),
    re.compile(rf"contrecord is requested by {_LSN}"),
    # PostgreSQL 16 and later name the LSN of a bad page.
    re.compile(rf"(?:invalid magic number|unexpected pageaddr) .* in WAL segment \w+, LSN {_LSN}"),
)
# PostgreSQL 15 names a bad page by its segment and offset.
_AT_OFFSET = re.compile(
    r"(?:invalid magic number [0-9A-F]+|unexpected pageaddr [0-9A-F/]+) in log segment "
    r"([0-9A-F]{24}), offset (\d+)"
)


def end_of_wal(stderr: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int | None:
    """The LSN where the valid WAL ends, from pg_waldump's error, or None if not known."""
    for line in stderr.splitlines():
        if "pg_waldump: error:" not in line:
            continue
        for pattern in _AT_LSN:
            found = pattern.search(line)
            if found:
                return lsn_to_int(found.group(1))
        found = _AT_OFFSET.search(line)
        if found:
            return wal_segment_number(found.group(1), segment_size) * segment_size + int(
                found.group(2)
            )
    return None
