"""Where a stopped cluster's WAL ends, from pg_waldump's last words (instances.waldump)."""

from __future__ import annotations

import pytest

from instances.wal import lsn_to_int
from instances.waldump import end_of_wal

MB16 = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("said", "end"),
    [
        # As PostgreSQL 15's pg_waldump said it after a kill -9, on this machine.
        (
            "pg_waldump: error: error in WAL record at 0/1B35740: invalid record length at "
            "0/1B358D8: wanted 24, got 0",
            "0/1B358D8",
        ),
        (
            "pg_waldump: error: error in WAL record at 0/3000060: record with incorrect "
            "prev-link 0/2FFFF28 at 0/3000098",
            "0/3000098",
        ),
        (
            "pg_waldump: error: error in WAL record at 0/4FFFFD0: invalid magic number 0000 "
            "in log segment 000000010000000000000005, offset 0",
            "0/5000000",
        ),
        (
            "pg_waldump: error: error in WAL record at 0/5001F00: unexpected pageaddr 0/1002000 "
            "in log segment 000000010000000000000005, offset 8192",
            "0/5002000",
        ),
        (
            "pg_waldump: error: error in WAL record at 0/5001F00: invalid magic number 0000 in "
            "WAL segment 000000010000000000000005, LSN 0/5002000, offset 8192",
            "0/5002000",
        ),
        (
            "pg_waldump: error: error in WAL record at 1/2000028: incorrect resource manager "
            "data checksum in record at 1/20000A0",
            "1/20000A0",
        ),
    ],
)
def test_it_reads_where_the_wal_ends(said, end):
    assert end_of_wal("some progress\n" + said + "\n") == lsn_to_int(end)


@pytest.mark.parametrize(
    "said",
    [
        "",
        'pg_waldump: error: could not open file "000000010000000000000003": No such file',
        "pg_waldump: error: could not find a valid record after 0/3000000",
        "invalid record length at 0/1B358D8",  # not pg_waldump's error line
    ],
)
def test_it_does_not_guess_from_other_messages(said):
    assert end_of_wal(said) is None


def test_it_uses_the_segment_size_of_the_cluster():
    said = (
        "pg_waldump: error: error in WAL record at 0/0: invalid magic number 0000 in log "
        "segment 000000010000000000000003, offset 0"
    )
    assert end_of_wal(said, segment_size=64 * 1024 * 1024) == 3 * 64 * 1024 * 1024
    assert end_of_wal(said) == 3 * MB16
