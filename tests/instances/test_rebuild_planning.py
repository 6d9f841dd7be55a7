"""Rebuild, remaster and init: the pure decisions and parsers (no lab, no database)."""

from __future__ import annotations

import pytest

from instances import controldata
from instances import rebuild_planning as rp
from instances.wal import lsn_to_int

CONTROLDATA = """\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7710818126975774298
Database cluster state:               shut down in recovery
pg_control last modified:             Sun Nov 22 03:25:06 2026
Latest checkpoint location:           0/40736A8
Latest checkpoint's REDO location:    0/4073670
Latest checkpoint's REDO WAL file:    000000010000000000000004
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Latest checkpoint's oldestCommitTsXid:0
Minimum recovery ending location:     0/4073720
wal_level setting:                    replica
wal_log_hints setting:                on
Bytes per WAL segment:                16777216
Data page checksum version:           1
Mock authentication nonce:            351c55b4f00066a1924b1bfd2554aaa9
"""
SYSID = "7710818126975774298"


def control(**changes) -> controldata.ControlData:
    base = controldata.parse_controldata(CONTROLDATA)
    return controldata.ControlData(**{**base.__dict__, **changes})


def facts(**changes) -> rp.RebuildFacts:
    values = dict(
        requested="auto",
        control=control(),
        control_error="",
        upstream_system_identifier=SYSID,
        upstream_oldest_segment=3,
        upstream_timeline=1,
    )
    values.update(changes)
    return rp.RebuildFacts(**values)


class TestControlData:
    def test_it_reads_the_fields_a_rebuild_needs(self):
        data = controldata.parse_controldata(CONTROLDATA)
        assert data.system_identifier == SYSID
        assert data.state == "shut down in recovery"
        assert (data.checksum_version, data.wal_log_hints) == (1, True)
        assert data.redo_lsn == lsn_to_int("0/4073670")
        assert (data.timeline, data.segment_size) == (1, 16 * 1024 * 1024)
        assert data.rewindable

    def test_it_is_rewindable_with_either_checksums_or_wal_log_hints(self):
        assert control(checksum_version=0, wal_log_hints=True).rewindable
        assert control(checksum_version=1, wal_log_hints=False).rewindable
        assert not control(checksum_version=0, wal_log_hints=False).rewindable

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "pg_controldata: error: could not open file",
            "Database system identifier: abc\n",
            "Database system identifier: 1; rm -rf /\n",
        ],
    )
    def test_it_rejects_output_without_a_system_identifier(self, text):
        with pytest.raises(controldata.ParseError):
            controldata.parse_controldata(text)

    def test_it_rejects_a_bad_number(self):
        with pytest.raises(controldata.ParseError):
            controldata.parse_controldata(CONTROLDATA.replace("version:           1", "version: x"))

    def test_it_tolerates_a_missing_redo_location(self):
        text = CONTROLDATA.replace("0/4073670", "???")
        assert controldata.parse_controldata(text).redo_lsn is None


class TestChooseMethod:
    def test_it_rewinds_a_copy_of_the_herd_with_checksums(self):
        decision = rp.choose_method(facts())
        assert decision.method == rp.PG_REWIND
        assert decision.sentence == (
            f"method: pg_rewind because same system identifier as the upstream ({SYSID}), "
            "data checksums on, cluster state 'shut down in recovery'"
        )

    def test_it_copies_when_the_control_file_is_unreadable(self):
        decision = rp.choose_method(facts(control=None, control_error="No such file"))
        assert decision.method == rp.PG_BASEBACKUP
        assert "cannot read its data directory (No such file)" in decision.reason

    def test_it_copies_another_cluster(self):
        decision = rp.choose_method(facts(upstream_system_identifier="1"))
        assert decision.method == rp.PG_BASEBACKUP
        assert "differs from the upstream's 1" in decision.reason

    def test_it_copies_when_pg_rewind_cannot_see_changed_pages(self):
        decision = rp.choose_method(facts(control=control(checksum_version=0, wal_log_hints=False)))
        assert decision.method == rp.PG_BASEBACKUP
        assert "neither data checksums nor wal_log_hints" in decision.reason

    def test_it_copies_a_replica_whose_wal_the_upstream_removed(self):
        decision = rp.choose_method(facts(upstream_oldest_segment=5))
        assert decision.method == rp.PG_BASEBACKUP
        assert "redo 0/4073670" in decision.reason and "already removed" in decision.reason
        # The same segment is still there: a rewind (or a restart) can catch up.
        assert rp.choose_method(facts(upstream_oldest_segment=4)).method == rp.PG_REWIND
        # On another timeline pg_rewind brings the WAL itself: no such check.
        other = facts(upstream_oldest_segment=5, upstream_timeline=2)
        assert rp.choose_method(other).method == rp.PG_REWIND

    @pytest.mark.parametrize("method", ["pg_basebackup", "rsync"])
    def test_it_uses_the_method_asked_for(self, method):
        decision = rp.choose_method(facts(requested=method))
        assert decision == rp.Decision(method, "the DBA asked for a full copy with it")

    @pytest.mark.parametrize("method", ["pg_rewind", "cp", "", "rsync; rm -rf /"])
    def test_it_rejects_unknown_methods(self, method):
        with pytest.raises(ValueError):
            rp.choose_method(facts(requested=method))


class TestRebuildRefusal:
    def refusal(self, **changes):
        values = dict(
            label="shop on db1:5432",
            recorded_primary=False,
            live_primary=False,
            downstreams=[],
            fenced=False,
            force=False,
        )
        values.update(changes)
        return rp.rebuild_refusal(**values)

    def test_it_allows_a_replica(self):
        assert self.refusal() is None

    def test_it_refuses_a_running_primary_unless_forced(self):
        assert "is running as a primary" in self.refusal(live_primary=True)
        assert self.refusal(live_primary=True, force=True) is None

    def test_it_refuses_the_recorded_primary_but_not_a_fenced_old_one(self):
        assert "recorded as the herd's primary" in self.refusal(recorded_primary=True)
        assert self.refusal(recorded_primary=True, fenced=True) is None

    def test_it_refuses_an_upstream_of_replicas_unless_forced(self):
        message = self.refusal(downstreams=["shop on db3:5432"])
        assert "has replicas of its own (shop on db3:5432)" in message
        assert self.refusal(downstreams=["x"], force=True) is None

    def test_it_rebuilds_a_half_copied_instance_without_force(self):
        # It may even run as a primary (started by hand): its data is incomplete anyway.
        assert self.refusal(live_primary=True, recorded_primary=True, unfinished=True) is None


class TestUnfinishedRebuild:
    def test_it_never_rewinds_a_half_copied_directory(self):
        decision = rp.choose_method(facts(unfinished_job=12))
        assert decision.method == rp.PG_BASEBACKUP
        assert decision.reason.startswith("the rebuild of job 12 did not finish")

    def test_it_still_uses_the_method_the_dba_asked_for(self):
        assert rp.choose_method(facts(unfinished_job=12, requested="rsync")).method == rp.RSYNC


class TestRemasterRefusal:
    replica = rp.Position("b", True, lsn_to_int("0/5000000"), 1)

    def test_it_accepts_an_upstream_at_or_past_the_replica(self):
        for lsn in ("0/5000000", "0/6000000"):
            upstream = rp.Position("a", True, lsn_to_int(lsn), 1)
            assert rp.remaster_refusal(self.replica, lsn_to_int("0/5000000"), upstream) is None

    def test_it_refuses_an_upstream_behind_the_replica(self):
        upstream = rp.Position("a", True, lsn_to_int("0/4FFFFFF"), 1)
        message = rp.remaster_refusal(self.replica, lsn_to_int("0/5000000"), upstream)
        assert message.startswith("a is behind b: it is at 0/4FFFFFF, the replica already replayed")

    def test_it_refuses_an_upstream_on_an_older_timeline(self):
        replica = rp.Position("b", True, 0, 3)
        upstream = rp.Position("a", False, lsn_to_int("9/0"), 2)
        assert "on timeline 2, behind b (timeline 3)" in rp.remaster_refusal(replica, 0, upstream)

    def test_it_accepts_a_new_primary_on_a_newer_timeline_even_at_a_lower_lsn(self):
        upstream = rp.Position("a", False, lsn_to_int("0/4000000"), 2)
        assert rp.remaster_refusal(self.replica, lsn_to_int("0/5000000"), upstream) is None


class TestProgress:
    def test_it_reads_the_last_rsync_progress2_line(self):
        out = (
            "          0   0%    0.00kB/s    0:00:00 (xfr#0, to-chk=10/12)\r"
            "    131,072  12%  128.00kB/s    0:00:07 (xfr#1, to-chk=9/12)\r"
            "  1,234,567,890  35%  180.50MB/s    0:00:05 (xfr#12, to-chk=100/200)\r"
        )
        progress = rp.parse_rsync_progress(out)
        assert (progress.done, progress.percent) == (1_234_567_890, 35)
        assert progress.rate == pytest.approx(180.5 * 1024**2)
        assert progress.describe() == "1.1 GB (35%), 180.5 MB/s"

    def test_it_finds_nothing_in_rsync_output_without_progress(self):
        assert rp.parse_rsync_progress("") is None
        assert rp.parse_rsync_progress("receiving incremental file list\n") is None
        # A cut first line (tail -c) does not count.
        assert rp.parse_rsync_progress("67%  1.00MB/s 0:00:01\r") is None

    def test_it_reads_du(self):
        assert rp.parse_du("123456\t/var/lib/postgresql/15/main\n") == 123456
        with pytest.raises(controldata.ParseError):
            rp.parse_du("du: cannot access '/nope': No such file or directory")

    def test_it_never_shows_100_percent_before_the_copy_ends(self):
        assert rp.copy_progress(350, 1000, None).percent == 35
        assert rp.copy_progress(5000, 1000, None).percent == 99
        assert rp.copy_progress(5, 0, None).percent == 0
        text = rp.copy_progress(1288490188, 3650722201, 180 * 1024**2).describe()
        assert text == "1.2 GB of 3.4 GB (35%), 180.0 MB/s"

    def test_it_maps_the_copy_onto_the_job(self):
        assert [rp.job_percent(p) for p in (0, 50, 100, 150, -3)] == [5, 45, 85, 85, 5]
