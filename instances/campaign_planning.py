"""What a campaign does next, decided from its jobs' states alone: pure, no I/O.

The driver (instances.jobs.campaigns) reads the campaign's jobs under a row lock, asks
`decide`, and applies the answer: which held jobs to release, and the campaign's state.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from instances.choices import CampaignState, JobState


def assign_waves(count: int, *, canary: bool, wave_size: int | None) -> list[int]:
    """The wave (1, 2, …) of each of `count` jobs in order: the canary alone in wave 1,
    then waves of `wave_size` (None or 0: all the others in one wave)."""
    if count < 0:
        raise ValueError("a campaign cannot have a negative number of jobs")
    if wave_size is not None and wave_size < 0:
        raise ValueError("a wave cannot have a negative size")
    waves: list[int] = []
    first = 1
    if canary and count:
        waves.append(1)
        first = 2
    rest = count - len(waves)
    size = wave_size or rest or 1
    waves.extend(first + index // size for index in range(rest))
    return waves


@dataclass(frozen=True)
class Item:
    id: int
    wave: int
    state: str  # a JobState
    held: bool

    @property
    def terminal(self) -> bool:
        return self.state in JobState.terminal()

    @property
    def failed(self) -> bool:
        return self.terminal and self.state != JobState.SUCCEEDED


@dataclass(frozen=True)
class Decision:
    release: tuple[int, ...]  # job ids to release now, in order
    state: str  # the campaign's state from now on
    note: str  # why, when the state says less than enough
    finished: bool  # every job has ended


def decide(
    items: Sequence[Item],
    *,
    state: str,
    concurrency: int,
    halt_on_failure: bool,
    failures_accepted: Collection[int] = (),
    note: str = "",
) -> Decision:
    """Release what may start now, and say the campaign's state.

    - every job ended: succeeded, or finished with failures (abandoned stays abandoned);
    - paused, halted, abandoned: release nothing;
    - a failure (not succeeded, not accepted by a resume) with `halt_on_failure`: halted;
    - otherwise the lowest wave with an unfinished job is the current one; its held jobs
      are released in order until `concurrency` jobs are in flight. A later wave waits
      until every job of the earlier ones has ended.
    """
    if concurrency < 1:
        raise ValueError("a campaign's concurrency is at least 1")
    ordered = sorted(items, key=lambda i: (i.wave, i.id))
    failures = [i for i in ordered if i.failed and i.id not in failures_accepted]
    if all(i.terminal for i in ordered):
        if state == CampaignState.ABANDONED:
            return Decision((), state, note, True)
        failed = [i for i in ordered if i.failed]
        if failed:
            return Decision(
                (),
                CampaignState.FAILED,
                f"{len(failed)} of {len(ordered)} job(s) did not succeed: "
                + ", ".join(f"#{i.id} {i.state}" for i in failed[:5]),
                True,
            )
        return Decision((), CampaignState.SUCCEEDED, f"all {len(ordered)} job(s) succeeded", True)
    if state != CampaignState.RUNNING:
        return Decision((), state, note, False)
    if failures and halt_on_failure:
        first = failures[0]
        held = sum(1 for i in ordered if i.held)
        return Decision(
            (),
            CampaignState.HALTED,
            f"halted: job #{first.id} {first.state}; {held} job(s) held: resume or abandon",
            False,
        )
    in_flight = sum(1 for i in ordered if not i.terminal and not i.held)
    current = min(i.wave for i in ordered if not i.terminal)
    room = max(0, concurrency - in_flight)
    release = tuple(i.id for i in ordered if i.held and i.wave == current)[:room]
    return Decision(release, CampaignState.RUNNING, "", False)
