"""Concept-drift detection on a served model's error stream, in River's style: ``update`` then look.

>>> from datetime import datetime, timedelta, UTC
>>> import random
>>> rng = random.Random(0)
>>> monitor = ModelMonitor("m", version=1, delta=0.002, grace=200, window=300)
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> found = []
>>> for i in range(3000):
...     correct = rng.random() > (0.02 if i < 1500 else 0.5)
...     drift = monitor.update(correct, t0 + timedelta(seconds=i))
...     if drift:
...         found.append(i)
>>> len(found) == 1 and 1500 < found[0] < 1700
True
>>> monitor.drift is not None and monitor.drift.accuracy_before > 0.95 > 0.9 > monitor.drift.accuracy_after
True
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from river.drift import ADWIN


def change_point(outcomes: list[bool]) -> int:
    """Index where the error rate most likely changed: the best two-segment Bernoulli split.

    ADWIN says *that* the stream changed; its window after the cut still
    holds part of the old regime, and training on that part would teach the
    new model the old concept. So the split is re-estimated over the recent
    history by maximum likelihood.

    >>> change_point([True] * 80 + [False, True] * 20)
    80
    """
    n = len(outcomes)
    if n < 2:
        return 0
    prefix = [0]
    for correct in outcomes:
        prefix.append(prefix[-1] + int(correct))

    def loglik(hits: int, size: int) -> float:
        if size == 0 or hits in (0, size):
            return 0.0
        p = hits / size
        return hits * math.log(p) + (size - hits) * math.log(1 - p)

    best, best_k = -math.inf, 0
    for k in range(1, n):
        score = loglik(prefix[k], k) + loglik(prefix[n] - prefix[k], n - k)
        if score > best:
            best, best_k = score, k
    return best_k


@dataclass(frozen=True)
class DriftEvidence:
    observations: int
    window: int
    accuracy_before: float
    accuracy_after: float
    change_point_time: datetime
    detected_at: datetime


@dataclass
class ModelMonitor:
    """Rolling accuracy and an ADWIN detector for one version of one model.

    A new version starts a new monitor: its errors are a new stream, and it
    gets ``grace`` observations before drift may be declared on it. Drift is
    declared once per version: the next signal comes from the next version.
    """

    model_name: str
    version: int
    delta: float
    grace: int
    window: int
    observations: int = 0
    correct_total: int = 0
    drift: DriftEvidence | None = None
    detector: ADWIN = field(init=False)
    recent: deque[tuple[bool, datetime]] = field(init=False)
    rolling: deque[bool] = field(init=False)
    rolling_correct: int = 0

    def __post_init__(self) -> None:
        self.detector = ADWIN(delta=self.delta)
        self.recent = deque(maxlen=max(self.window, 2000))
        self.rolling = deque(maxlen=self.window)

    @property
    def rolling_accuracy(self) -> float | None:
        return self.rolling_correct / len(self.rolling) if self.rolling else None

    @property
    def accuracy(self) -> float | None:
        return self.correct_total / self.observations if self.observations else None

    def update(self, correct: bool, event_time: datetime) -> DriftEvidence | None:
        """Fold one labelled prediction in; return evidence the first time drift is detected."""
        self.observations += 1
        self.correct_total += int(correct)
        self.recent.append((correct, event_time))
        if len(self.rolling) == self.rolling.maxlen:
            self.rolling_correct -= int(self.rolling[0])
        self.rolling.append(correct)
        self.rolling_correct += int(correct)
        self.detector.update(0 if correct else 1)
        if not self.detector.drift_detected or self.observations < self.grace or self.drift is not None:
            return None
        history = list(self.recent)
        split = change_point([c for c, _ in history])
        before, after = history[:split] or history[:1], history[split:]
        self.drift = DriftEvidence(
            observations=self.observations,
            window=len(after),
            accuracy_before=sum(c for c, _ in before) / len(before),
            accuracy_after=sum(c for c, _ in after) / len(after),
            change_point_time=after[0][1],
            detected_at=event_time,
        )
        return self.drift


def expired(index: list[tuple[float, str]], watermark: float) -> list[str]:
    """Pop from the heap ``index`` of (event time, key) every key stamped before ``watermark``, oldest first.

    >>> index = [(10.0, "a"), (30.0, "c"), (20.0, "b")]
    >>> heapq.heapify(index)
    >>> expired(index, 25.0), index
    (['a', 'b'], [(30.0, 'c')])
    """
    keys = []
    while index and index[0][0] < watermark:
        keys.append(heapq.heappop(index)[1])
    return keys


@dataclass
class JoinExpiry:
    """Which join entries of one partition a label can no longer reach.

    A prediction waits for its label at most ``horizon`` of event time: once
    the partition has seen an event ``horizon`` later than it, the entry is
    dropped, whether it still waits (no label will come: a REST call without
    one, a producer that never sends it), holds a label that no prediction
    claimed, or only marks the event as scored. Event time rather than the
    clock, so a replay or a backlog expires exactly what live traffic would;
    the state then holds at most the entries of one horizon per partition.

    >>> expiry = JoinExpiry(horizon=60.0)
    >>> expiry.track("m:e1", 0.0); expiry.track("m:e2", 30.0); expiry.track("m:e1", 50.0)
    >>> expiry.advance(61.0), expiry.advance(10.0), expiry.advance(95.0), len(expiry)
    (['m:e1'], [], ['m:e2'], 0)
    """

    horizon: float
    latest: float | None = None
    _index: list[tuple[float, str]] = field(default_factory=list)
    _tracked: set[str] = field(default_factory=set)

    def track(self, key: str, at: float) -> None:
        """Stamp ``key`` with the event time it was first written at; rewrites keep the first stamp."""
        if key not in self._tracked:
            self._tracked.add(key)
            heapq.heappush(self._index, (at, key))

    def advance(self, at: float) -> list[str]:
        """Move the partition's stream time to ``at`` (it never goes back) and return the keys that expired."""
        self.latest = at if self.latest is None else max(self.latest, at)
        keys = expired(self._index, self.latest - self.horizon)
        self._tracked.difference_update(keys)
        return keys

    def __len__(self) -> int:
        return len(self._tracked)
