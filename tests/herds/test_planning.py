"""Switchover and failover planning on many fleet shapes: pure, no I/O."""

from __future__ import annotations

import dataclasses

import pytest

from herds.planning import (
    Member,
    Snapshot,
    plan_failover,
    plan_switchover,
)

MB = 1024 * 1024


def member(
    id, host, *, answering=True, recovery=True, lsn=0, dr=False, priority=1000, fenced=False
):
    kwargs = {"current_lsn": lsn} if recovery is False else {"receive_lsn": lsn, "replay_lsn": lsn}
    return Member(
        id=id,
        label=f"db on {host}:5432",
        hostname=host,
        answering=answering,
        in_recovery=recovery if answering else None,
        dr_candidate=dr,
        priority=priority,
        fenced=fenced,
        **kwargs,
    )


def snap(primary, *replicas, known=None, end=None, seen=None):
    return Snapshot(
        herd="db",
        primary=primary,
        replicas=tuple(replicas),
        vhost="db",
        last_known_primary_lsn=known,
        primary_end_of_wal=end,
        last_seen_seconds=seen,
    )


PRIMARY = member(1, "h1", recovery=False, lsn=0x5A000000)


def test_it_switches_over_to_the_most_replayed_replica_with_a_sentence():
    plan = plan_switchover(
        snap(PRIMARY, member(2, "h2", lsn=0x59000000), member(3, "h3", lsn=0x5A000000))
    )
    assert plan.ok and plan.candidate.id == 3
    assert plan.sentence == (
        "switch db over to db on h3:5432: the replica with the highest "
        "replayed LSN, replayed 0/5A000000, 0 bytes behind the primary's "
        "0/5A000000"
    )
    assert plan.steps[0].startswith("checkpoint and stop the primary db on h1:5432")
    assert plan.steps[3] == "point db at h3 (was h1)"
    assert plan.steps[4] == "point db on h2:5432 at the new primary"
    assert (plan.dns_from, plan.dns_to, plan.data_loss_bytes) == ("h1", "h3", 0)


def test_it_honours_the_dbas_choice_of_target_and_refuses_a_bad_one():
    down = member(4, "h4", answering=False)
    fenced = member(5, "h5", fenced=True)
    shape = snap(PRIMARY, member(2, "h2", lsn=1), member(3, "h3", lsn=2), down, fenced)
    assert plan_switchover(shape, target_id=2).candidate.id == 2
    assert "the target the DBA confirmed" in plan_switchover(shape, target_id=2).sentence
    for target, why in (
        (99, "the chosen target is no longer a replica of this herd"),
        (4, "db on h4:5432 no longer answers"),
        (5, "db on h5:5432 is fenced"),
    ):
        refused = plan_switchover(shape, target_id=target)
        assert not refused.ok and refused.candidate is None
        assert refused.sentence == (
            f"refused: {why}: nothing done (the target the DBA confirmed is never replaced "
            "by another)"
        )


def test_a_switchover_stays_in_the_herds_environment_unless_the_dba_picks_the_dr_copy():
    local = dataclasses.replace(member(2, "h2", lsn=0x59000000), environment="prod")
    dr = dataclasses.replace(member(3, "h3", lsn=0x5A000000, dr=True), environment="dr")
    shape = dataclasses.replace(snap(PRIMARY, local, dr), environment="prod")
    plan = plan_switchover(shape)
    assert plan.candidate.id == 2
    assert "highest replayed LSN in the herd's own environment prod" in plan.sentence
    assert plan_switchover(shape, target_id=3).candidate.id == 3


def test_a_failover_promotes_exactly_the_confirmed_target_and_counts_its_own_loss():
    down = member(1, "h1", answering=False)
    behind, ahead = member(2, "h2", lsn=0x5000), member(3, "h3", lsn=0x5000 + 40 * MB)
    shape = snap(down, behind, ahead, end=0x5000 + 40 * MB)
    assert plan_failover(shape, max_loss_bytes=MB).candidate.id == 3
    refused = plan_failover(shape, max_loss_bytes=MB, target_id=2)
    assert not refused.ok
    assert "promote db on h2:5432: the target the DBA confirmed, received LSN 0/5000" in (
        refused.sentence
    )
    assert "40.0 MB lost" in refused.sentence
    assert "(the DBA's choice: db on h3:5432 has 40.0 MB more)" in refused.sentence
    accepted = plan_failover(shape, max_loss_bytes=MB, accept_loss=True, target_id=2)
    assert accepted.ok and accepted.candidate.id == 2 and accepted.data_loss_bytes == 40 * MB
    gone = plan_failover(
        snap(down, behind, member(3, "h3", answering=False)), max_loss_bytes=MB, target_id=3
    )
    assert not gone.ok and gone.sentence.startswith("refused: db on h3:5432 no longer answers")


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        (snap(None, member(2, "h2")), "has no recorded primary"),
        (snap(member(1, "h1", answering=False), member(2, "h2")), "is not answering as a primary"),
        (snap(PRIMARY, member(2, "h2", answering=False)), "no answering replica"),
        (snap(PRIMARY, member(2, "h2", fenced=True)), "no answering replica"),
        (snap(PRIMARY), "no answering replica"),
    ],
)
def test_it_refuses_switchovers_that_cannot_be_safe(shape, reason):
    plan = plan_switchover(shape)
    assert not plan.ok and reason in plan.sentence and plan.sentence.startswith("refused:")


def test_it_fails_over_to_the_replica_that_received_most():
    down = member(1, "h1", answering=False)
    shape = snap(
        down,
        member(2, "h2", lsn=0x50000000),
        member(3, "h3", lsn=0x50001000),
        known=0x50001000,
        seen=12.4,
    )
    # The primary's last recorded position only bounds the loss: it may have written
    # after it. Not proved, so not within any limit: it needs "accept data loss".
    refused = plan_failover(shape, max_loss_bytes=MB)
    assert not refused.ok and refused.needs_accept_loss and refused.candidate.id == 3
    assert "the loss is not known to be within the 1.0 MB allowed" in refused.sentence
    plan = plan_failover(shape, max_loss_bytes=MB, accept_loss=True)
    assert plan.ok and plan.candidate.id == 3
    assert (plan.data_loss_bytes, plan.loss_exact) == (0, False)
    assert plan.sentence == (
        "promote db on h3:5432: highest received LSN 0/50001000, at least 0 bytes lost "
        "(primary last seen at 0/50001000, 12 s ago); the true loss is unknown"
    )
    assert (
        plan.steps[0] == "fence db on h1:5432: stop it if its server answers, else mark it fenced"
    )


def test_it_breaks_ties_by_dr_candidate_then_priority():
    down = member(1, "h1", answering=False)
    tied = [
        member(2, "h2", lsn=7),
        member(3, "h3", lsn=7, dr=True, priority=5),
        member(4, "h4", lsn=7, dr=True, priority=2),
    ]
    plan = plan_failover(snap(down, *tied, known=7), max_loss_bytes=0)
    assert plan.candidate.id == 4
    assert "acknowledged DR candidate among equals" in plan.sentence
    plain = plan_failover(
        snap(down, member(5, "h5", lsn=7, priority=3), member(6, "h6", lsn=7, priority=1), known=7),
        max_loss_bytes=0,
    )
    assert plain.candidate.id == 6 and "priority 1 among equals" in plain.sentence


def test_it_refuses_a_lossy_failover_unless_loss_is_accepted():
    down = member(1, "h1", answering=False)
    shape = snap(down, member(2, "h2", lsn=0x1000000), known=0x1000000 + 3 * MB)
    refused = plan_failover(shape, max_loss_bytes=MB)
    assert not refused.ok and refused.needs_accept_loss
    assert "at least 3.0 MB lost (primary last seen at 0/1300000)" in refused.sentence
    assert "tick 'accept data loss'" in refused.sentence
    accepted = plan_failover(shape, max_loss_bytes=MB, accept_loss=True)
    assert accepted.ok and accepted.data_loss_bytes == 3 * MB


def test_it_refuses_a_failover_with_an_unknown_loss_unless_accepted():
    shape = snap(member(1, "h1", answering=False), member(2, "h2", lsn=5), known=None)
    assert not plan_failover(shape, max_loss_bytes=MB).ok
    plan = plan_failover(shape, max_loss_bytes=MB, accept_loss=True)
    assert plan.ok and "last position is unknown: the loss cannot be bounded" in plan.sentence
    assert (plan.data_loss_bytes, plan.loss_exact) == (None, False)


def test_it_proves_no_loss_only_against_the_old_primarys_end_of_wal():
    down = member(1, "h1", answering=False)
    caught_up = snap(down, member(2, "h2", lsn=0x5000), known=0x4000, end=0x5000)
    plan = plan_failover(caught_up, max_loss_bytes=0)
    assert plan.ok and not plan.needs_accept_loss
    assert (plan.data_loss_bytes, plan.loss_exact) == (0, True)
    assert "0 bytes lost: it has all WAL up to the old primary's end of WAL 0/5000" in (
        plan.sentence
    )
    behind = snap(down, member(2, "h2", lsn=0x5000), end=0x5000 + 2 * MB)
    refused = plan_failover(behind, max_loss_bytes=MB)
    assert not refused.ok and "that loses more than the 1.0 MB allowed" in refused.sentence
    assert "2.0 MB lost: it is that far behind the old primary's end of WAL" in refused.sentence
    small = plan_failover(behind, max_loss_bytes=4 * MB)
    assert small.ok and (small.data_loss_bytes, small.loss_exact) == (2 * MB, True)


def test_it_refuses_to_fail_over_a_healthy_primary():
    plan = plan_failover(snap(PRIMARY, member(2, "h2", lsn=1)), max_loss_bytes=MB)
    assert not plan.ok and "use a planned switchover" in plan.sentence


def test_it_fails_over_a_herd_whose_primary_is_not_recorded():
    plan = plan_failover(
        snap(None, member(2, "h2", lsn=9), member(3, "h3", lsn=4)),
        max_loss_bytes=MB,
        accept_loss=True,
    )
    assert plan.ok and plan.candidate.id == 2 and plan.dns_from == ""


def test_a_failover_salvages_what_the_candidate_lacks_when_the_old_primarys_disk_answers():
    down = member(1, "h1", answering=False)
    behind = dataclasses.replace(
        snap(down, member(2, "h2", lsn=0x5000), member(3, "h3", lsn=0x4000), end=0x5000 + 18 * MB),
        salvage_possible=True,
    )
    plan = plan_failover(behind, max_loss_bytes=0)
    # No tick needed: the loss is proved 0 once the salvage has replayed.
    assert plan.ok and not plan.needs_accept_loss and plan.candidate.id == 2
    assert (plan.data_loss_bytes, plan.loss_exact, plan.salvage_bytes) == (0, True, 18 * MB)
    assert "0 bytes lost once the 18.0 MB of WAL it lacks is salvaged" in plan.sentence
    assert plan.steps[0].startswith("copy the 18.0 MB of WAL db on h2:5432 lacks from db on h1")
    assert "if that fails, plan again without it" in plan.steps[0]
    assert plan.steps[1].startswith("fence db on h1:5432")
    # Nothing to salvage: no salvage step.
    caught_up = dataclasses.replace(behind, primary_end_of_wal=0x5000)
    plan = plan_failover(caught_up, max_loss_bytes=0)
    assert plan.ok and plan.salvage_bytes == 0 and plan.steps[0].startswith("fence")
    # Salvage impossible (DBA skipped it, or it failed): the exact loss rules apply.
    without = dataclasses.replace(behind, salvage_possible=False)
    refused = plan_failover(without, max_loss_bytes=MB)
    assert not refused.ok and "18.0 MB lost" in refused.sentence and not refused.salvage_bytes


def test_no_salvage_without_the_old_primarys_end_of_wal():
    down = member(1, "h1", answering=False)
    unknown = dataclasses.replace(
        snap(down, member(2, "h2", lsn=0x5000), known=0x6000), salvage_possible=True
    )
    plan = plan_failover(unknown, max_loss_bytes=MB, accept_loss=True)
    assert plan.ok and not plan.salvage_bytes and not plan.loss_exact
    assert "at least 4.0 kB lost" in plan.sentence


def test_a_replica_that_does_not_answer_is_named_in_the_plan_as_needing_a_remaster():
    down = member(3, "h3", answering=False)
    fenced = member(4, "h4", fenced=True)
    for plan in (
        plan_switchover(snap(PRIMARY, member(2, "h2", lsn=0x5A000000), down, fenced)),
        plan_failover(
            snap(
                member(1, "h1", answering=False),
                member(2, "h2", lsn=0x5A000000),
                down,
                fenced,
                known=0x5A000000,
            ),
            max_loss_bytes=MB,
            accept_loss=True,
        ),
    ):
        assert plan.ok and plan.candidate.id == 2, plan.sentence
        assert "db on h3:5432 not answering: will need a remaster once it is back" in " ".join(
            plan.steps
        )
        assert "point db on h3:5432 at the new primary" not in plan.steps
        assert "db on h4:5432 is fenced: left as it is (rebuild it)" in plan.steps
