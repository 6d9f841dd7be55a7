"""Campaign decisions (instances.campaign_planning): pure logic, edge cases."""

from __future__ import annotations

import pytest

from instances.campaign_planning import Item, assign_waves, decide
from instances.choices import CampaignState, JobState

Q, R, S, F = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED


def items(*specs):
    """(wave, state, held) per job, ids from 1."""
    return [Item(i + 1, wave, state, held) for i, (wave, state, held) in enumerate(specs)]


def run(specs, state=CampaignState.RUNNING, concurrency=2, halt=True, accepted=()):
    return decide(
        items(*specs),
        state=state,
        concurrency=concurrency,
        halt_on_failure=halt,
        failures_accepted=accepted,
    )


@pytest.mark.parametrize(
    "count, canary, size, waves",
    [
        (0, True, None, []),
        (1, True, None, [1]),
        (4, True, None, [1, 2, 2, 2]),
        (4, False, None, [1, 1, 1, 1]),
        (5, False, 2, [1, 1, 2, 2, 3]),
        (5, True, 2, [1, 2, 2, 3, 3]),
        (3, False, 0, [1, 1, 1]),
    ],
)
def test_assign_waves(count, canary, size, waves):
    assert assign_waves(count, canary=canary, wave_size=size) == waves


def test_assign_waves_refuses_negative():
    with pytest.raises(ValueError):
        assign_waves(-1, canary=False, wave_size=None)
    with pytest.raises(ValueError):
        assign_waves(2, canary=False, wave_size=-1)


def test_first_wave_released_up_to_concurrency():
    decision = run([(1, Q, True), (1, Q, True), (1, Q, True)], concurrency=2)
    assert decision.release == (1, 2)
    assert decision.state == CampaignState.RUNNING and not decision.finished


def test_canary_alone_then_next_wave_only_after_it_ended():
    assert run([(1, R, False), (2, Q, True), (2, Q, True)]).release == ()
    assert run([(1, S, False), (2, Q, True), (2, Q, True)]).release == (2, 3)


def test_in_flight_jobs_use_the_room():
    assert run([(1, R, False), (1, Q, True), (1, Q, True)], concurrency=2).release == (2,)
    # released but not yet claimed counts as in flight too
    assert run([(1, Q, False), (1, R, False), (1, Q, True)], concurrency=2).release == ()


def test_a_failure_halts_and_releases_nothing():
    decision = run([(1, F, False), (2, Q, True), (2, Q, True)])
    assert decision.release == ()
    assert decision.state == CampaignState.HALTED
    assert "#1 failed" in decision.note and "2 job(s) held" in decision.note


def test_cancelled_and_errored_halt_too():
    for state in (JobState.CANCELLED, JobState.ERRORED):
        assert run([(1, state, False), (2, Q, True)]).state == CampaignState.HALTED


def test_accepted_failure_lets_it_run_on():
    decision = run([(1, F, False), (2, Q, True)], accepted=[1])
    assert decision.release == (2,) and decision.state == CampaignState.RUNNING


def test_no_halt_runs_past_failures_and_ends_failed():
    assert run([(1, F, False), (2, Q, True)], halt=False).release == (2,)
    decision = run([(1, F, False), (2, S, False)], halt=False)
    assert decision.finished and decision.state == CampaignState.FAILED
    assert "1 of 2" in decision.note


def test_all_succeeded():
    decision = run([(1, S, False), (2, S, False)])
    assert decision.finished and decision.state == CampaignState.SUCCEEDED


@pytest.mark.parametrize("state", [CampaignState.PAUSED, CampaignState.HALTED])
def test_paused_or_halted_releases_nothing(state):
    decision = run([(1, S, False), (2, Q, True)], state=state)
    assert decision.release == () and decision.state == state and not decision.finished


def test_abandoned_stays_abandoned_when_everything_ended():
    decision = run([(1, S, False), (2, JobState.CANCELLED, False)], state=CampaignState.ABANDONED)
    assert decision.finished and decision.state == CampaignState.ABANDONED


def test_order_is_by_wave_then_id_whatever_the_input_order():
    decision = decide(
        [Item(9, 1, Q, True), Item(3, 1, Q, True), Item(1, 2, Q, True)],
        state=CampaignState.RUNNING,
        concurrency=5,
        halt_on_failure=True,
    )
    assert decision.release == (3, 9)


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError):
        run([(1, Q, True)], concurrency=0)
