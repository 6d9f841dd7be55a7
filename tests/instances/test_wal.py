"""LSN arithmetic and byte formatting (instances.wal): pure, with hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instances.wal import (
    EndOfWal,
    bytes_between,
    format_bytes,
    int_to_lsn,
    lsn_to_int,
    segment_name,
    segments_between,
    wal_segment_number,
)

MB = 1024 * 1024


def test_it_converts_lsns_both_ways():
    assert lsn_to_int("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert int_to_lsn(lsn_to_int("16/B374D848")) == "16/B374D848"
    assert lsn_to_int("0/5a000000") == 0x5A000000
    assert lsn_to_int("") is None and lsn_to_int(None) is None


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_it_round_trips_every_position(position):
    assert lsn_to_int(int_to_lsn(position)) == position


@pytest.mark.parametrize(
    "bad", ["5A000000", "16/", "/1", "G/0", "1/2/3", "123456789/0", "0/0\n", " 0/0", "0/-1"]
)
def test_it_refuses_what_is_not_an_lsn(bad):
    with pytest.raises(ValueError, match="not an LSN"):
        lsn_to_int(bad)


@given(st.text(max_size=30))
def test_it_refuses_or_reads_any_text_without_crashing(text):
    try:
        value = lsn_to_int(text)
    except ValueError:
        return
    assert value is None or lsn_to_int(int_to_lsn(value)) == value


def test_it_refuses_positions_outside_64_bits():
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            int_to_lsn(bad)


def test_it_measures_how_far_one_position_trails_another():
    assert bytes_between("0/5000000", "0/4000000") == 0x1000000
    # Read at slightly different moments: a replica ahead is 0 behind, never negative.
    assert bytes_between("0/4000000", "0/5000000") == 0
    assert bytes_between(None, "0/1") is None and bytes_between("0/1", "") is None
    assert bytes_between("junk", "0/1") is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1.0 kB"),
        (3 * MB, "3.0 MB"),
        (18 * MB, "18.0 MB"),
        (3 * 1024 * MB, "3.0 GB"),
        (2**50, "1024.0 TB"),
    ],
)
def test_it_formats_bytes_one_way_everywhere(value, text):
    assert format_bytes(value) == text


def test_it_numbers_wal_segments_across_log_files():
    assert wal_segment_number("000000010000000000000004") == 4
    assert wal_segment_number("000000020000000100000003") == 256 + 3
    assert wal_segment_number("000000010000000100000000") == lsn_to_int("1/0") // 2**24
    for bad in ("00000001000000000000000", "00000001000000000000000g", "../../etc/passwd"):
        with pytest.raises(ValueError):
            wal_segment_number(bad)


def test_segment_names_follow_postgresql_naming():
    assert segment_name(1, 0) == "000000010000000000000000"
    assert segment_name(1, 0x3953A18) == "000000010000000000000003"
    assert segment_name(0x1A, 0x1_FF000000) == "0000001A00000001000000FF"
    assert segment_name(2, 0x1_00000000, 64 * 1024 * 1024) == "000000020000000100000000"
    for bad in ((0, 1), (-1, 1), (1 << 32, 1)):
        with pytest.raises(ValueError):
            segment_name(*bad)
    with pytest.raises(ValueError, match="segment size"):
        segment_name(1, 0, 3 * 1024 * 1024)


def test_a_salvage_copies_the_segments_from_the_replicas_position_to_the_end():
    # The replica received up to 0/33B0000 of a WAL that ends at 0/3953A18.
    assert segments_between(1, 0x33B0000, 0x3953A18) == ["000000010000000000000003"]
    assert segments_between(1, 0x2FFFFFF, 0x4000001) == [
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000004",
    ]
    # An end exactly on a segment boundary: the next segment holds nothing of it.
    assert segments_between(1, 0x2000000, 0x3000000) == ["000000010000000000000002"]
    assert segments_between(1, 0x3953A18, 0x3953A18) == []
    assert segments_between(1, 0x4000000, 0x3953A18) == []
    assert EndOfWal(0x3953A18, 1).segments_from(0x33B0000) == ["000000010000000000000003"]
