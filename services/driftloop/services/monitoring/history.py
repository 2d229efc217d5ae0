"""What a model's dashboard draws: accuracy over time, each data-drift check per feature, the drifts raised.

The live state of monitoring (the monitors, the windows, the estimator) says
where a model stands now; people watching the loop also want to see how it
got there. So beside that state each model keeps bounded series, as JSON in
the same table entries, which a restart reads back like the rest:

- ``RealizedSeries`` (in the model's track): the current version's rolling
  accuracy, a point at most every ``every`` labelled outcomes;
- ``DataHistory`` (in the model's data watch): the estimated accuracy with
  its interval, a point at most every ``every`` served predictions; every
  data-drift check with each column's statistic, adjusted p-value and verdict;
  and the data-drift events raised.

Times are when monitoring took the point (seconds since the epoch, as the
stage's clock read them), the same clock the drift events' ``occurred_at``
comes from, so the two series and the drift markers share one axis.

>>> realized = RealizedSeries(every=100)
>>> [realized.offer(t, 1, n, 0.9) for t, n in [(1.0, 100), (2.0, 150), (3.0, 200), (4.0, 20)]]
[True, False, True, False]
>>> realized.offer(5.0, 2, 100, 0.95), [(p.version, p.observations) for p in realized.points]
(True, [(1, 100), (1, 200), (2, 100)])
>>> RealizedSeries.from_dict(realized.to_dict()) == realized
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driftloop.services.monitoring.datadrift import FeatureDrift
from driftloop.services.monitoring.estimation import AccuracyEstimate

#: Accuracy points kept per model and series: at the demo's pace, a point every 50 outcomes, a few hours.
KEPT_POINTS = 500
#: Data-drift checks kept per model, with every column's result.
KEPT_CHECKS = 100
#: Data-drift events kept per model; each drifted column of a check is one.
KEPT_DATA_DRIFTS = 50
#: Outcomes (or served predictions) between two points of a series.
EVERY = 50


@dataclass(frozen=True)
class RealizedPoint:
    at: float
    version: int
    #: Labelled outcomes of ``version`` when the point was taken.
    observations: int
    accuracy: float


@dataclass(frozen=True)
class EstimatedPoint:
    at: float
    version: int
    #: Predictions of ``version`` the estimator had seen when the point was taken.
    observations: int
    accuracy: float
    lower: float
    upper: float


@dataclass(frozen=True)
class AccuracyPoint:
    """One point of the merged series: the realized accuracy, the estimate, or both when taken together."""

    at: float
    version: int
    realized: float | None = None
    estimated: float | None = None
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class ColumnResult:
    """One column in one check: what ``datadrift.FeatureDrift`` says, without what only the event needs."""

    feature: str
    statistic: str
    value: float
    p_adjusted: float
    psi: float
    drifted: bool

    @classmethod
    def of(cls, result: FeatureDrift) -> ColumnResult:
        return cls(result.feature, result.statistic, result.value, result.p_adjusted, result.psi, result.drifted)


@dataclass(frozen=True)
class CheckRecord:
    at: float
    version: int
    #: Rows the version's detector had seen at the check.
    observations: int
    columns: tuple[ColumnResult, ...]


def _since_last(points: Sequence[RealizedPoint | EstimatedPoint], version: int, observations: int) -> int:
    """Observations of ``version`` since its last point; a version without one, or whose count started again
    (its monitor was dropped and made anew), counts from zero."""
    last = next((p for p in reversed(points) if p.version == version), None)
    if last is None or observations < last.observations:
        return observations
    return observations - last.observations


@dataclass
class RealizedSeries:
    """The rolling accuracy of the version outcomes are current for, a point per ``every`` of its outcomes."""

    every: int = EVERY
    points: deque[RealizedPoint] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.points = deque(self.points, maxlen=KEPT_POINTS)

    def offer(self, at: float, version: int, observations: int, accuracy: float | None) -> bool:
        """Take a point when ``every`` outcomes of ``version`` passed since its last one; say whether it did."""
        if accuracy is None or _since_last(self.points, version, observations) < self.every:
            return False
        self.points.append(RealizedPoint(at, version, observations, accuracy))
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.every, "points": [[p.at, p.version, p.observations, p.accuracy] for p in self.points]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RealizedSeries:
        if not data:
            return cls()
        points = (RealizedPoint(float(a), int(v), int(n), float(x)) for a, v, n, x in data["points"])
        return cls(int(data["every"]), deque(points))


@dataclass
class DataHistory:
    """The estimate over time, every check's per-column results and the data-drift events of one model."""

    every: int = EVERY
    estimates: deque[EstimatedPoint] = field(default_factory=deque)
    checks: deque[CheckRecord] = field(default_factory=deque)
    #: ``DriftDetected`` events of kind "data", as JSON, oldest first.
    drifts: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.estimates = deque(self.estimates, maxlen=KEPT_POINTS)
        self.checks = deque(self.checks, maxlen=KEPT_CHECKS)

    def offer_estimate(self, at: float, version: int, observations: int, estimate: AccuracyEstimate | None) -> bool:
        """Take a point when ``every`` predictions of ``version`` passed since its last one; say whether it did."""
        if estimate is None or _since_last(self.estimates, version, observations) < self.every:
            return False
        self.estimates.append(
            EstimatedPoint(at, version, observations, estimate.accuracy, estimate.lower, estimate.upper)
        )
        return True

    def record_check(self, at: float, version: int, observations: int, results: Iterable[FeatureDrift]) -> None:
        self.checks.append(CheckRecord(at, version, observations, tuple(ColumnResult.of(r) for r in results)))

    def keep_drift(self, event: dict[str, Any]) -> None:
        self.drifts = [*self.drifts, event][-KEPT_DATA_DRIFTS:]

    def to_dict(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "estimates": [[p.at, p.version, p.observations, p.accuracy, p.lower, p.upper] for p in self.estimates],
            "checks": [
                {
                    "at": c.at,
                    "version": c.version,
                    "observations": c.observations,
                    "columns": [[r.feature, r.statistic, r.value, r.p_adjusted, r.psi, r.drifted] for r in c.columns],
                }
                for c in self.checks
            ],
            "drifts": self.drifts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DataHistory:
        if not data:
            return cls()
        estimates = (
            EstimatedPoint(float(a), int(v), int(n), float(x), float(lo), float(hi))
            for a, v, n, x, lo, hi in data["estimates"]
        )
        checks = (
            CheckRecord(
                float(c["at"]),
                int(c["version"]),
                int(c["observations"]),
                tuple(
                    ColumnResult(str(f), str(s), float(x), float(q), float(p), bool(d))
                    for f, s, x, q, p, d in c["columns"]
                ),
            )
            for c in data["checks"]
        )
        return cls(int(data["every"]), deque(estimates), deque(checks), list(data["drifts"]))


def merge_accuracy(realized: Iterable[RealizedPoint], estimated: Iterable[EstimatedPoint]) -> list[AccuracyPoint]:
    """Both series as one, in time order; points of one version taken at the same moment become one point.

    >>> merged = merge_accuracy([RealizedPoint(2.0, 1, 50, 0.9)], [EstimatedPoint(1.0, 1, 50, 0.8, 0.7, 0.9),
    ...                                                          EstimatedPoint(2.0, 1, 100, 0.85, 0.8, 0.9)])
    >>> [(p.at, p.realized, p.estimated) for p in merged]
    [(1.0, None, 0.8), (2.0, 0.9, 0.85)]
    """
    points: dict[tuple[float, int], AccuracyPoint] = {}
    for r in realized:
        points[(r.at, r.version)] = AccuracyPoint(r.at, r.version, realized=r.accuracy)
    for e in estimated:
        base = points.get((e.at, e.version), AccuracyPoint(e.at, e.version))
        points[(e.at, e.version)] = AccuracyPoint(
            e.at, e.version, realized=base.realized, estimated=e.accuracy, lower=e.lower, upper=e.upper
        )
    return [points[key] for key in sorted(points)]
