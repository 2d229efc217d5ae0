"""Whether a consumer is making progress: the rule behind its readiness.

A consumer that is alive but stuck (a batch that fails on every try, a
handler that hangs) answers HTTP as well as a healthy one, so readiness must
look at what it does: a partition with records waiting (lag above zero) whose
position has not moved for the stall window is stalled. A partition without
lag is idle, not stuck, however long it waits. Pure and clock-free: callers
pass the time (``time.monotonic()`` in the consumer).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class _Partition:
    position: int | None = None
    end: int | None = None
    #: When the position last moved, or the partition was assigned.
    since: float = 0.0

    @property
    def lag(self) -> int:
        if self.position is None or self.end is None:
            return 0
        return max(0, self.end - self.position)


class ProgressWatch(Generic[P]):
    """Positions and end offsets per assigned partition, and when each position last moved.

    >>> watch: ProgressWatch[str] = ProgressWatch(stall_seconds=30)
    >>> watch.assigned(["p0", "p1"], now=0)
    >>> watch.observe("p0", position=10, end=50, now=1)
    >>> watch.observe("p1", position=5, end=5, now=1)
    >>> watch.stalled(now=20)
    {}
    >>> watch.stalled(now=40)
    {'p0': 40}
    >>> watch.observe("p0", position=20, end=50, now=41)
    >>> watch.stalled(now=60)
    {}
    """

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self._partitions: dict[P, _Partition] = {}

    def assigned(self, partitions: Iterable[P], now: float) -> None:
        """A new assignment: every partition starts its window now, what was known before is dropped."""
        self._partitions = {partition: _Partition(since=now) for partition in partitions}

    def observe(self, partition: P, *, position: int, end: int | None, now: float) -> None:
        """The durable position of ``partition`` (everything before it is done) and its end offset, if known."""
        state = self._partitions.setdefault(partition, _Partition(since=now))
        if state.position is None or position > state.position:
            state.since = now
        state.position = position
        if end is not None:
            state.end = end

    def stalled(self, now: float) -> dict[P, int]:
        """Partitions with records waiting whose position has not moved for the window, with their lag."""
        return {
            partition: state.lag
            for partition, state in self._partitions.items()
            if state.lag > 0 and now - state.since > self.stall_seconds
        }

    def lag(self) -> int:
        """Records waiting over all assigned partitions, as last observed."""
        return sum(state.lag for state in self._partitions.values())
