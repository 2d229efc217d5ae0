"""Concept-drift detection on a served model's error stream, in River's style: ``update`` then look.

>>> import random
>>> from driftloop.config import DriftPolicy
>>> policy = DriftPolicy(detector="cusum", grace_observations=200, accuracy_window=300)
>>> rng = random.Random(0)
>>> monitor = ModelMonitor("m", version=1, policy=policy)
>>> found = []
>>> for i in range(3000):
...     correct = rng.random() > (0.02 if i < 1500 else 0.5)
...     if monitor.update(correct, float(i)):
...         found.append(i)
>>> len(found) == 1 and 1500 <= found[0] < 1540
True
>>> monitor.drift is not None and monitor.drift.accuracy_before > 0.95 > 0.9 > monitor.drift.accuracy_after
True
>>> monitor.drift.detector, 1490 < monitor.drift.change_point_time <= found[0]
('cusum(arl=1e+08, rise=0.05, reference_se=2, reference=10000)', True)

The state is plain JSON, so it can live in a changelog-backed table, and a
monitor read back from it carries on where it was:

>>> again = ModelMonitor.from_dict(monitor.to_dict(), policy)
>>> (again.observations, again.rolling_accuracy, again.drift) == (3000, monitor.rolling_accuracy, monitor.drift)
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from river.drift import ADWIN

from driftloop.config import DriftPolicy, RolloutPolicy
from driftloop.rollout import Progress, RolloutPlan, Tally, abort, step
from driftloop.services.monitoring.cusum import BernoulliCusum
from driftloop.services.monitoring.history import RealizedSeries
from driftloop.services.monitoring.join import Outcome


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
    #: Event times, in seconds since the epoch.
    change_point_time: float
    detected_at: float
    #: The detector that fired, with its settings, and its figures at the time (the CUSUM's statistic,
    #: threshold and reference rates).
    detector: str = ""
    statistics: dict[str, float] = field(default_factory=dict)


#: Outcomes kept for the change-point estimate and for rebuilding the detector from the stored state.
HISTORY = 2000


def detector_name(policy: DriftPolicy) -> str:
    """The concept detector as events and the API name it: its kind and its settings.

    >>> detector_name(DriftPolicy(detector="adwin"))
    'adwin(delta=0.002)'
    """
    if policy.detector == "adwin":
        return f"adwin(delta={policy.delta:g})"
    c = policy.cusum
    return f"cusum(arl={c.arl:g}, rise={c.rise:g}, reference_se={c.reference_se:g}, reference={c.reference})"


@dataclass
class ModelMonitor:
    """Rolling accuracy and a concept-drift detector for one version of one model.

    The detector is the policy's: a one-sided Bernoulli CUSUM (``cusum.py``)
    against the version's own first outcomes, or River's ADWIN.

    A new version starts a new monitor: its errors are a new stream, and it
    gets ``grace`` observations before drift may be declared on it. Drift is
    declared only when the error rose: a model that got better has nothing to
    be retrained for. Once declared, the monitor waits for a new version; if
    none comes (the run failed, the gate rejected the challenger) it is
    ``rearm``-ed, and after a back-off it declares the drift again as long as
    the accuracy stays below what it was before. A detector looks for a change,
    and a drifted model's error no longer changes: it stays high, so the
    re-armed monitor asks whether the drop persists instead.

    The CUSUM's state is a few numbers, stored as they are. River's ADWIN
    cannot be written out, so the stored state keeps the last ``HISTORY``
    outcomes and a monitor read back rebuilds ADWIN from them: after a
    restart it has forgotten what lay further back, which only makes it a
    little slower to see a change that began before the restart. A state
    written under the other detector is rebuilt the same way.
    """

    model_name: str
    version: int
    policy: DriftPolicy
    observations: int = 0
    correct_total: int = 0
    drift: DriftEvidence | None = None
    #: Drifts declared on this version; whether one may be declared now, and from which observation on.
    attempts: int = 0
    armed: bool = True
    armed_after: int = 0
    #: A drift of this version was not resolved by a new version (a failed run, a rejected challenger).
    unresolved: bool = False
    recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    rolling_correct: int = 0
    detector: ADWIN | BernoulliCusum = field(init=False)

    def __post_init__(self) -> None:
        self.detector = self._new_detector()
        self.recent = deque(self.recent, maxlen=max(self.window, HISTORY))

    def _new_detector(self) -> ADWIN | BernoulliCusum:
        if self.policy.detector == "adwin":
            return ADWIN(delta=self.policy.delta)
        return BernoulliCusum(self.policy.cusum, grace=self.grace)

    @property
    def grace(self) -> int:
        return self.policy.grace_observations

    @property
    def window(self) -> int:
        return self.policy.accuracy_window

    @property
    def detector_name(self) -> str:
        return detector_name(self.policy)

    @property
    def rolling_size(self) -> int:
        return min(len(self.recent), self.window)

    @property
    def rolling_accuracy(self) -> float | None:
        return self.rolling_correct / self.rolling_size if self.recent else None

    @property
    def accuracy(self) -> float | None:
        return self.correct_total / self.observations if self.observations else None

    def update(self, correct: bool, event_time: float) -> DriftEvidence | None:
        """Fold one labelled prediction in; return evidence the first time a rise of the error is detected."""
        self.observations += 1
        self.correct_total += int(correct)
        if len(self.recent) >= self.window:
            self.rolling_correct -= int(self.recent[-self.window][0])
        self.recent.append((correct, event_time))
        self.rolling_correct += int(correct)
        self._detect(correct, event_time)
        if not self.armed or self.observations < max(self.grace, self.armed_after):
            return None
        evidence = self._change(event_time) if self.drift is None else self._persisting(event_time)
        if evidence is not None:
            self.drift, self.armed, self.attempts = evidence, False, self.attempts + 1
        return evidence

    def _detect(self, correct: bool, event_time: float) -> None:
        if isinstance(self.detector, BernoulliCusum):
            self.detector.update(not correct, event_time)
        else:
            self.detector.update(0 if correct else 1)

    def _change(self, event_time: float) -> DriftEvidence | None:
        """A first drift: the detector fired, and the error went up."""
        if isinstance(self.detector, BernoulliCusum):
            return self._cusum_change(self.detector, event_time)
        return self._adwin_change(self.detector, event_time)

    def _cusum_change(self, cusum: BernoulliCusum, event_time: float) -> DriftEvidence | None:
        """The run since the CUSUM last left zero is the new regime; everything before it the old one."""
        design = cusum.design
        if not cusum.alarm or design is None or cusum.run_start is None:
            return None
        before = self.observations - cusum.run_outcomes
        accuracy_after = 1 - cusum.run_errors / cusum.run_outcomes
        accuracy_before = (
            (self.correct_total - (cusum.run_outcomes - cusum.run_errors)) / before if before else 1 - design.estimate
        )
        if accuracy_after >= accuracy_before:
            return None
        return DriftEvidence(
            observations=self.observations,
            window=cusum.run_outcomes,
            accuracy_before=accuracy_before,
            accuracy_after=accuracy_after,
            change_point_time=cusum.run_start,
            detected_at=event_time,
            detector=self.detector_name,
            statistics={
                "statistic": cusum.statistic,
                "threshold": design.threshold,
                "p0": design.p0,
                "p1": design.p1,
                "reference_error_rate": design.estimate,
                "reference_outcomes": float(cusum.reference_outcomes),
                "change_index": float(before),
            },
        )

    def _adwin_change(self, adwin: ADWIN, event_time: float) -> DriftEvidence | None:
        """ADWIN saw the error stream change; where is re-estimated, and the error must have gone up."""
        if not adwin.drift_detected:
            return None
        # Labels arrive late and out of order: the change happened in event time, so it is looked for there.
        history = sorted(self.recent, key=lambda outcome: outcome[1])
        split = change_point([c for c, _ in history])
        before, after = history[:split] or history[:1], history[split:]
        accuracy_before = sum(c for c, _ in before) / len(before)
        accuracy_after = sum(c for c, _ in after) / len(after)
        if accuracy_after >= accuracy_before:
            return None
        return DriftEvidence(
            observations=self.observations,
            window=len(after),
            accuracy_before=accuracy_before,
            accuracy_after=accuracy_after,
            change_point_time=after[0][1],
            detected_at=event_time,
            detector=self.detector_name,
        )

    def _persisting(self, event_time: float) -> DriftEvidence | None:
        """A drift raised again: after the back-off the rolling accuracy is still nearer the drifted level
        than the one before it. The change point stays where it was, so a new run trains on all of the new
        regime seen since."""
        last = self.drift
        accuracy = self.rolling_accuracy
        if last is None or accuracy is None or self.rolling_size < self.window:
            return None
        if accuracy >= last.accuracy_before - (last.accuracy_before - last.accuracy_after) / 2:
            return None
        return DriftEvidence(
            observations=self.observations,
            window=self.rolling_size,
            accuracy_before=last.accuracy_before,
            accuracy_after=accuracy,
            change_point_time=last.change_point_time,
            detected_at=event_time,
            detector=last.detector or self.detector_name,
        )

    def rearm(self) -> int | None:
        """Wait for a new drift after the last one went unresolved; return the back-off in observations.

        The back-off doubles with each attempt, from ``grace``: a run that keeps
        failing is retried less and less often. None when there is nothing to
        re-arm (no drift raised, or already re-armed).
        """
        if self.armed or self.drift is None:
            return None
        backoff = self.grace * (1 << max(self.attempts - 1, 0))
        self.armed, self.armed_after, self.unresolved = True, self.observations + backoff, True
        return backoff

    def to_dict(self) -> dict[str, Any]:
        cusum = self.detector.to_dict() if isinstance(self.detector, BernoulliCusum) else None
        return {
            "version": self.version,
            "observations": self.observations,
            "correct": self.correct_total,
            "outcomes": "".join("1" if c else "0" for c, _ in self.recent),
            "times": [t for _, t in self.recent],
            "drift": asdict(self.drift) if self.drift else None,
            "attempts": self.attempts,
            "armed": self.armed,
            "armed_after": self.armed_after,
            "unresolved": self.unresolved,
            "cusum": cusum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], policy: DriftPolicy, *, model_name: str = "") -> ModelMonitor:
        recent = deque(zip((c == "1" for c in data["outcomes"]), data["times"], strict=True))
        monitor = cls(
            model_name,
            int(data["version"]),
            policy,
            observations=data["observations"],
            correct_total=data["correct"],
            drift=DriftEvidence(**data["drift"]) if data["drift"] else None,
            attempts=data.get("attempts", 1 if data["drift"] else 0),
            armed=data.get("armed", data["drift"] is None),
            armed_after=data.get("armed_after", 0),
            unresolved=data.get("unresolved", False),
            recent=recent,
        )
        stored = data.get("cusum")
        if isinstance(monitor.detector, BernoulliCusum) and stored is not None:
            monitor.detector = BernoulliCusum.from_dict(stored, policy.cusum, grace=monitor.grace)
        else:
            for correct, event_time in monitor.recent:
                monitor._detect(correct, event_time)
        monitor.rolling_correct = sum(c for c, _ in list(monitor.recent)[-monitor.window :])
        return monitor


#: Monitors of superseded versions kept beside the current one (their late outcomes still land there).
KEPT_VERSIONS = 3


@dataclass
class Detected:
    version: int
    evidence: DriftEvidence
    #: Which drift of the version this is (1 the first, then each raised again after a re-arm).
    attempt: int


@dataclass(frozen=True)
class Rearmed:
    version: int
    drift_event_id: str
    attempts: int
    backoff: int


@dataclass
class ModelTrack:
    """Everything monitoring knows of one model: a monitor per version, which version is current, the
    staged rollout under way, and how far each join partition's outcomes have been applied.

    Outcomes of a superseded version go to that version's monitor and never
    to the current one, so late outcomes of v1 cannot disturb v2's grace
    period, and only the current version can raise drift. The current
    version is the champion as the registry last named it (the newest
    version seen before it named one): a challenger rolling out, or one
    withdrawn, never is.

    A rollout's plan (``rollout.RolloutPlan``) and both sides' labelled
    outcomes since it began live here too, so the verdict is taken on
    exactly the outcomes the monitors counted, each once.

    ``applied`` makes a replay harmless: each outcome names the join record
    that completed it, by partition and offset, and one join partition's
    outcomes arrive in offset order; so an outcome at or below the partition's
    mark was applied before and is dropped. The marks are stored with the
    monitors, in one table entry, so both reach the changelog together.
    """

    model_name: str
    policy: DriftPolicy
    monitors: dict[int, ModelMonitor] = field(default_factory=dict)
    applied: dict[int, tuple[int, int]] = field(default_factory=dict)
    drifts: list[dict[str, Any]] = field(default_factory=list)
    realized: RealizedSeries = field(default_factory=RealizedSeries)
    champion: int | None = None
    rollout: RolloutPlan | None = None
    tally: Tally = field(default_factory=Tally)

    @property
    def current(self) -> ModelMonitor | None:
        if self.champion is not None:
            return self.monitors.get(self.champion)
        return self.monitors[max(self.monitors)] if self.monitors else None

    def name_champion(self, version: int) -> None:
        """The registry moved the champion alias (a promotion, a completed rollout, a rollback)."""
        self.champion = version

    def begin(self, plan: RolloutPlan) -> RolloutPlan | None:
        """Start following a rollout; return the running one it supersedes, if any."""
        superseded = self.rollout if self.rollout is not None and self.rollout.status == "running" else None
        self.rollout, self.tally = plan, Tally()
        return superseded

    def withdraw(self, version: int, reason: str) -> bool:
        """End the running rollout of ``version`` from outside the verdict; False when there is none."""
        if self.rollout is None or self.rollout.version != version or self.rollout.status != "running":
            return False
        self.rollout = abort(self.rollout, reason)
        return True

    def look(self, policy: RolloutPolicy, now: datetime) -> Progress | None:
        """Step the running rollout on the outcomes counted so far; None when none runs."""
        if self.rollout is None or self.rollout.status != "running":
            return None
        progress = step(self.rollout, self.tally, now, policy)
        self.rollout = progress.plan
        return progress

    def _count(self, outcome: Outcome) -> None:
        plan = self.rollout
        if plan is None or plan.status != "running":
            return
        if outcome.version == plan.version:
            self.tally = replace(self.tally, challenger=self.tally.challenger.add(not outcome.correct))
        elif outcome.version == plan.champion_version:
            self.tally = replace(self.tally, champion=self.tally.champion.add(not outcome.correct))

    def fresh(self, outcome: Outcome) -> bool:
        """Not applied before: past its join partition's mark."""
        partition, offset, index = outcome.source
        return (offset, index) > self.applied.get(partition, (-1, -1))

    def in_event_order(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """A batch's outcomes that are ``fresh``, each once, in event order; to ``apply`` in that order.

        The join sends an event's outcome when its last record arrives, so a
        backlog (monitoring restarted, labels sent in bulk, labels of some
        predictions sent apart) reaches the track as one partition's outcomes
        over the whole period, then another's, or the predictions that
        carried their label, then the rest. Read in that order the error
        stream shows the old regime coming back after the new one began: a
        detector learns the new regime as its reference (the CUSUM's grace
        period may lie across the drift) or sees the change fade. The change
        happened in event time, so a batch is read in event time.

        Freshness is judged on the marks as the batch found them: a join
        partition's outcomes reach the track in offset order, so everything of
        it below its mark was applied in an earlier batch; a repeat within
        the batch (the join re-sent what the track had not read yet) counts
        once.
        """
        seen: set[tuple[int, int, int]] = set()
        taken = []
        for outcome in outcomes:
            if outcome.source not in seen and self.fresh(outcome):
                seen.add(outcome.source)
                taken.append(outcome)
        return sorted(taken, key=lambda outcome: outcome.event_time)

    def apply(self, outcome: Outcome) -> Detected | None:
        """Fold in an outcome that is ``fresh``; return the drift it reveals on the current version, if any."""
        partition, offset, index = outcome.source
        self.applied[partition] = max((offset, index), self.applied.get(partition, (-1, -1)))
        self._count(outcome)
        monitor = self.monitors.get(outcome.version)
        if monitor is None:
            monitor = ModelMonitor(self.model_name, outcome.version, self.policy)
            self.monitors[outcome.version] = monitor
            kept = {self.champion, self.rollout.version if self.rollout else None}
            for old in [v for v in sorted(self.monitors) if v not in kept][:-KEPT_VERSIONS]:
                del self.monitors[old]
        if outcome.version not in self.monitors:
            return None
        evidence = monitor.update(outcome.correct, outcome.event_time)
        current = self.current
        if evidence is None or current is None or current.version != outcome.version:
            return None
        return Detected(outcome.version, evidence, monitor.attempts)

    def rearm(self, correlation_id: str) -> Rearmed | None:
        """Re-arm the current version after the turn of the loop its last drift began ended without a new one.

        Only the drift it names counts: a failed manual run, or a rejection of
        a drift that was already superseded, re-arms nothing.
        """
        current = self.current
        if current is None or current.drift is None:
            return None
        mine = [d for d in self.drifts if d["model_version"] == current.version]
        if not mine or mine[-1]["correlation_id"] != correlation_id:
            return None
        backoff = current.rearm()
        if backoff is None:
            return None
        return Rearmed(current.version, mine[-1]["event_id"], current.attempts, backoff)

    def sample(self, at: float) -> bool:
        """Offer the current version's rolling accuracy to the history (``history.RealizedSeries.offer``)."""
        current = self.current
        if current is None:
            return False
        return self.realized.offer(at, current.version, current.observations, current.rolling_accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitors": {str(v): m.to_dict() for v, m in self.monitors.items()},
            "applied": {str(p): list(mark) for p, mark in self.applied.items()},
            "drifts": self.drifts,
            "realized": self.realized.to_dict(),
            "champion": self.champion,
            "rollout": self.rollout.to_dict() if self.rollout else None,
            "tally": self.tally.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, model_name: str, policy: DriftPolicy) -> ModelTrack:
        track = cls(model_name, policy)
        if data:
            track.monitors = {
                int(v): ModelMonitor.from_dict(m, policy, model_name=model_name) for v, m in data["monitors"].items()
            }
            track.applied = {int(p): (mark[0], mark[1]) for p, mark in data["applied"].items()}
            track.drifts = list(data["drifts"])
            track.realized = RealizedSeries.from_dict(data.get("realized"))
            track.champion = data.get("champion")
            track.rollout = RolloutPlan.from_dict(data["rollout"]) if data.get("rollout") else None
            track.tally = Tally.from_dict(data["tally"]) if data.get("tally") else Tally()
        return track
