"""What a replica serves: one loaded champion per model, and during a staged rollout the challenger beside it.

Each is swapped whole, so a request never sees half a swap; which side
serves an entity, and which only scores beside it, is decided here from the
rollout as ``deployment.events`` last described it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from driftloop.contracts import RolloutAborted, RolloutCompleted, RolloutStarted, RolloutStepped, utcnow
from driftloop.modeling import ModelArtifact
from driftloop.rollout import routes_to_challenger, split_salt

Role = Literal["champion", "challenger"]


@dataclass(frozen=True)
class Served:
    model_name: str
    version: int
    artifact_uri: str
    artifact: ModelArtifact
    loaded_at: datetime = field(default_factory=utcnow)
    artifact_sha256: str | None = None


@dataclass(frozen=True)
class RolloutState:
    """A staged rollout as its events describe it: the challenger's share, whether the other side scores
    beside the one that serves, and whether it still runs."""

    model_name: str
    version: int
    strategy: str
    percent: float
    shadowed: bool
    status: Literal["running", "completed", "aborted"] = "running"

    @property
    def salt(self) -> str:
        """The plan's own salt (``rollout.RolloutPlan.salt``): every replica splits alike."""
        return split_salt(self.model_name, self.version)


def follow(
    state: RolloutState | None, event: RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted
) -> RolloutState | None:
    """The rollout after ``event``; a direct rollout (deployment's own record of a swap) is none to follow.

    >>> from driftloop.contracts import RolloutStarted, RolloutStepped
    >>> common = {"model_name": "m", "version": 2, "strategy": "canary", "instance": "monitoring"}
    >>> s = follow(None, RolloutStarted(**common, percent=5))
    >>> s = follow(s, RolloutStepped(**common, step=1, percent=25, previous_percent=5))
    >>> (s.percent, s.shadowed, s.status)
    (25.0, False, 'running')
    """
    if event.strategy == "direct":
        return state
    if isinstance(event, RolloutStarted):
        shadowed = event.strategy in ("shadow", "blue_green")
        return RolloutState(event.model_name, event.version, event.strategy, event.percent or 0.0, shadowed)
    if state is None or state.version != event.version:
        return state
    if isinstance(event, RolloutStepped):
        return replace(state, percent=event.percent)
    if isinstance(event, RolloutCompleted):
        return replace(state, percent=100.0, shadowed=False, status="completed")
    return replace(state, percent=0.0, shadowed=False, status="aborted")


@dataclass(frozen=True)
class Side:
    """One model call for an entity: the version, its role in the rollout, and whether the caller gets it."""

    served: Served
    role: Role
    serves: bool


@dataclass(frozen=True)
class Split:
    """A challenger loaded beside the champion, with the share of entities it serves."""

    challenger: Served
    rollout: RolloutState

    def sides(self, champion: Served, key: str) -> tuple[Side, ...]:
        """The side that serves ``key`` first, then the side that scores beside it when the stage is shadowed.

        A canary or A/B stage sends each entity to one side by its stable
        share; a shadow serves the champion and lets the challenger score
        too; a blue-green watch serves the challenger and keeps the old
        champion scoring, ready to be switched back to.
        """
        if routes_to_challenger(key, self.rollout.percent, self.rollout.salt):
            first, other = Side(self.challenger, "challenger", True), Side(champion, "champion", False)
        else:
            first, other = Side(champion, "champion", True), Side(self.challenger, "challenger", False)
        return (first, other) if self.rollout.shadowed and self.rollout.status == "running" else (first,)


@dataclass
class LatencyWatch:
    """The challenger's most recent model calls, in milliseconds, for the rollout's latency ceiling."""

    size: int = 1000
    #: Calls before a p99 is reported: with fewer, one slow call (a cold cache) would decide.
    min_calls: int = 50
    calls: deque[float] = field(default_factory=deque)

    def add(self, milliseconds: float) -> float | None:
        """Count a call; the p99 of the recent ones once there are ``min_calls``.

        >>> watch = LatencyWatch(min_calls=3)
        >>> [watch.add(ms) for ms in (1.0, 2.0, 100.0)]
        [None, None, 100.0]
        """
        self.calls.append(milliseconds)
        if len(self.calls) > self.size:
            self.calls.popleft()
        if len(self.calls) < self.min_calls:
            return None
        ordered = sorted(self.calls)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class ServingTable:
    """Champion per model, and the challenger while one rolls out. Readers take a reference; a swap replaces
    the reference in one assignment."""

    def __init__(self) -> None:
        self._served: dict[str, Served] = {}
        self._splits: dict[str, Split] = {}

    def get(self, model_name: str) -> Served | None:
        return self._served.get(model_name)

    def swap(self, served: Served) -> Served | None:
        previous = self._served.get(served.model_name)
        self._served[served.model_name] = served
        return previous

    def all(self) -> list[Served]:
        return list(self._served.values())

    def split(self, model_name: str) -> Split | None:
        return self._splits.get(model_name)

    def set_split(self, model_name: str, split: Split | None) -> None:
        if split is None:
            self._splits.pop(model_name, None)
        else:
            self._splits[model_name] = split

    def sides(self, model_name: str, key: str) -> tuple[Side, ...]:
        """Who scores ``key`` for this model now; empty when no champion is loaded."""
        champion = self._served.get(model_name)
        if champion is None:
            return ()
        split = self._splits.get(model_name)
        return split.sides(champion, key) if split is not None else (Side(champion, "champion", True),)
