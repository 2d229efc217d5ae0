"""Each model's live rows against its champion's reference: data drift per feature and the estimated accuracy.

Rows reach a model's watch from two topics, re-keyed by model so that one
watch sees them all: feature vectors of the model's view (its feature
columns) and the champion's predictions (``@prediction`` and
``@probability``, the prediction columns of ``datadrift``; the probability
also feeds the accuracy estimate). Feature rows do not say which version
they were served by; they count for the current champion, which is what
registry events say.

Each row carries the offset it had on its source partition, so a row that
arrives a second time (a re-sent batch after a crash) is dropped by the
partition's mark, as outcomes are in ``domain.ModelTrack``.

>>> import random
>>> from driftloop.config import AccuracyEstimation, DataDriftPolicy
>>> from driftloop.reference import ReferenceSample
>>> rng = random.Random(3)
>>> sample = ReferenceSample("m", "r", {"x": [rng.gauss(0, 1) for _ in range(2000)]})
>>> policy = DataDriftPolicy(window=200, check_every=200)
>>> watch = DataWatch("m", policy, AccuracyEstimation(window=50))
>>> watch.switch(1, VersionReference.from_sample(sample, policy))
>>> rows = [(i, None, {"x": rng.gauss(3, 1)}) for i in range(200)]
>>> [(f.feature, n) for n, f in watch.apply(RowBatch("m", FEATURES, 0, rows), at=10.0)]
[('x', 200)]
>>> watch.apply(RowBatch("m", FEATURES, 0, rows), at=11.0), watch.detector.observations
([], 200)

Every check, drifted or not, stays in the history with each column's result:

>>> [(c.at, [(r.feature, r.drifted) for r in c.columns]) for c in watch.history.checks]
[(10.0, [('x', True)])]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from driftloop.config import AccuracyEstimation, DataDriftPolicy
from driftloop.contracts.events import FeatureValue
from driftloop.reference import Calibration, ReferenceSample
from driftloop.services.monitoring.datadrift import PROBABILITY, DataDriftDetector, FeatureDrift, ReferenceProfile
from driftloop.services.monitoring.estimation import AccuracyEstimate, AccuracyEstimator
from driftloop.services.monitoring.history import DataHistory

FEATURES: Final = "f"
PREDICTIONS: Final = "p"
Source = Literal["f", "p"]

#: One row: its offset on the source partition, the version that served it (predictions only), its columns.
Row = tuple[int, int | None, dict[str, FeatureValue]]


@dataclass(frozen=True)
class RowBatch:
    """Rows of one model from one source partition, in offset order: one record of the internal topic."""

    model: str
    source: Source
    partition: int
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        return {"m": self.model, "s": self.source, "p": self.partition, "r": [list(row) for row in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowBatch:
        source = data["s"]
        if source not in (FEATURES, PREDICTIONS):
            raise ValueError(f"unknown row source {source!r}")
        rows: list[Row] = [(int(o), None if v is None else int(v), dict(values)) for o, v, values in data["r"]]
        return cls(str(data["m"]), source, int(data["p"]), rows)


@dataclass(frozen=True)
class VersionReference:
    """What a version's stored reference sample gives monitoring: the per-column profile and the calibration."""

    profile: ReferenceProfile
    calibration: Calibration

    @classmethod
    def from_sample(cls, sample: ReferenceSample, policy: DataDriftPolicy) -> VersionReference:
        return cls(ReferenceProfile.from_sample(sample, policy), sample.calibration)


@dataclass
class DataWatch:
    """One model's detector and estimator for its champion version, and how far each source partition was read.

    A new champion (a promotion or a rollback) starts both afresh: its
    reference is another sample, and the served probabilities are another
    model's. Rows of the champion that arrive before its reference is known
    only advance the marks.
    """

    model_name: str
    data_policy: DataDriftPolicy
    estimation_policy: AccuracyEstimation
    version: int | None = None
    detector: DataDriftDetector | None = None
    estimator: AccuracyEstimator | None = None
    marks: dict[str, int] = field(default_factory=dict)
    #: Outlives the versions: a new champion starts new windows, not a new history.
    history: DataHistory = field(default_factory=DataHistory)

    def switch(self, version: int, reference: VersionReference | None) -> None:
        self.version = version
        if reference is None:
            self.detector = self.estimator = None
            return
        self.detector = DataDriftDetector(self.model_name, version, reference.profile, self.data_policy)
        self.estimator = AccuracyEstimator(self.model_name, version, reference.calibration, self.estimation_policy)

    def apply(self, batch: RowBatch, *, at: float) -> list[tuple[int, FeatureDrift]]:
        """Fold in a batch's new rows; return each drifted column newly found, with the rows seen when it was.

        Its checks and the estimate it leads to go into ``history`` as taken at ``at``.
        """
        mark_key = f"{batch.source}:{batch.partition}"
        mark = self.marks.get(mark_key, -1)
        fresh = [row for row in batch.rows if row[0] > mark]
        if not fresh:
            return []
        self.marks[mark_key] = max(row[0] for row in fresh)
        if batch.source == PREDICTIONS:
            fresh = [row for row in fresh if row[1] == self.version]
        if self.detector is None or not fresh:
            return []
        values = [row[2] for row in fresh]
        version = self.detector.version
        if batch.source == PREDICTIONS and self.estimator is not None:
            probabilities = [v.get(PROBABILITY) for v in values]
            self.estimator.update([float(p) if isinstance(p, int | float) else None for p in probabilities])
            self.history.offer_estimate(at, version, self.estimator.observations, self.estimator.estimate())
        checks = self.detector.update(values)
        for check in checks:
            self.history.record_check(at, version, check.observations, check.results)
        return [(check.observations, f) for check in checks for f in check.findings]

    def estimate(self) -> AccuracyEstimate | None:
        return self.estimator.estimate() if self.estimator is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "detector": self.detector.to_dict() if self.detector else None,
            "estimator": self.estimator.to_dict() if self.estimator else None,
            "marks": self.marks,
            "history": self.history.to_dict(),
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        model_name: str,
        reference: VersionReference | None,
        data_policy: DataDriftPolicy,
        estimation_policy: AccuracyEstimation,
    ) -> DataWatch:
        """The stored state; ``reference`` is that of the stored version (None when it cannot be had)."""
        watch = cls(
            model_name,
            data_policy,
            estimation_policy,
            version=data["version"],
            marks=dict(data["marks"]),
            history=DataHistory.from_dict(data.get("history")),
        )
        if reference is not None and data["detector"] is not None:
            watch.detector = DataDriftDetector.from_dict(data["detector"], reference.profile, data_policy)
        if reference is not None and data["estimator"] is not None:
            watch.estimator = AccuracyEstimator.from_dict(data["estimator"], reference.calibration, estimation_policy)
        return watch
