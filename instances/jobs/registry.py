"""The operation registry: what a job kind runs, and the two ways an operation ends early.

Operations register themselves with `@operation(kind)` when their app loads
(`AppConfig.ready()` imports the modules that define them): the runner looks the kind up
here and imports no operation itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from instances.jobs.runner import JobContext


class JobFailed(Exception):
    """An expected failure: the message is the job's one-line error (what failed, where,
    the state it left, what to do)."""


class JobCancelled(Exception):
    pass


Operation = Callable[["JobContext"], str]
OPERATIONS: dict[str, Operation] = {}


def operation(kind: str) -> Callable[[Operation], Operation]:
    def register(func: Operation) -> Operation:
        if OPERATIONS.get(kind, func) is not func:
            raise RuntimeError(f"two operations registered for job kind {kind!r}")
        OPERATIONS[kind] = func
        return func

    return register


def registered(kind: str) -> Operation | None:
    return OPERATIONS.get(kind)
