"""Training decisions and the fit itself, with no I/O.

The drift admission rule and the time-ordered split are tiny, but they are where a
burst of drift events becomes one run and where an honest holdout comes
from, so they are kept here and tested as plain functions.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from driftloop.config import DataDriftPolicy, ModelSpec, TrainingPolicy
from driftloop.contracts.events import LabelValue
from driftloop.modeling import ModelArtifact, build_pipeline, score, select
from driftloop.offline import TrainingRow
from driftloop.reference import Calibration, ReferenceSample, feature_columns, sample_indices


def admit_drift(
    open_run: bool, last_created: datetime | None, now: datetime, cooldown: timedelta
) -> tuple[bool, datetime | None]:
    """How a drift enters the run queue: whether it is debounced, and else the earliest time its run may start.

    A drift while a drift run of the model is still open belongs to the turn
    that run answers (a burst of events): it is debounced. A drift after that
    run has ended is a new turn, even within the cooldown: monitoring raises
    one only when the last turn ended without a better champion (a failed
    run, a rejected challenger) and its re-arm back-off has run out. Dropping
    it would leave the drifted champion serving with nothing left to try, so
    it waits instead, queued until the cooldown since the last drift run has
    passed.

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> admit_drift(True, t, t + timedelta(seconds=5), timedelta(minutes=2))
    (True, None)
    >>> admit_drift(False, t, t + timedelta(seconds=5), timedelta(minutes=2))[1] == t + timedelta(minutes=2)
    True
    >>> admit_drift(False, t, t + timedelta(minutes=3), timedelta(minutes=2)), admit_drift(False, None, t, timedelta(0))
    ((False, None), (False, None))
    """
    if open_run:
        return True, None
    if last_created is not None and now - last_created < cooldown:
        return False, last_created + cooldown
    return False, None


def retrains_on(kind: str, policy: DataDriftPolicy) -> bool:
    """Concept drift always asks for a run; data drift only when the policy says it should.

    A shift of the inputs under an unchanged concept leaves the model as
    right as it was wherever it was sure, and a run on the same labels would
    learn the same rule: monitoring reports it, the error stream decides.

    >>> retrains_on("concept", DataDriftPolicy()), retrains_on("data", DataDriftPolicy())
    (True, False)
    >>> retrains_on("data", DataDriftPolicy(retrain=True))
    True
    """
    return kind != "data" or policy.retrain


def enough_rows(rows: int, policy: TrainingPolicy) -> bool:
    return rows >= policy.min_rows


def time_split(rows: Sequence[TrainingRow], holdout_fraction: float) -> tuple[list[TrainingRow], list[TrainingRow]]:
    """The newest ``holdout_fraction`` of rows (by event time) is the holdout: no peeking at the future.

    >>> from datetime import datetime, UTC
    >>> rows = [TrainingRow(str(i), "e", datetime(2026, 1, 1, i, tzinfo=UTC), {}, 0) for i in range(10)]
    >>> train, holdout = time_split(rows, 0.3)
    >>> [r.event_id for r in holdout]
    ['7', '8', '9']
    """
    ordered = sorted(rows, key=lambda r: (r.event_time, r.event_id))
    cut = len(ordered) - max(1, round(len(ordered) * holdout_fraction))
    return ordered[:cut], ordered[cut:]


@dataclass(frozen=True)
class FitResult:
    artifact: ModelArtifact
    metrics: dict[str, float]
    train_metrics: dict[str, float]


class SingleClassError(ValueError):
    pass


def _fitted(spec: ModelSpec, run_id: str, rows: Sequence[TrainingRow]) -> ModelArtifact:
    labels = [r.label for r in rows]
    if len(set(labels)) < 2:
        raise SingleClassError(f"training rows hold a single class {set(labels)}; a classifier needs two")
    pipeline = build_pipeline(spec.estimator, spec.params)
    artifact = ModelArtifact(model_name=spec.name, run_id=run_id, feature_names=list(spec.features), pipeline=pipeline)
    pipeline.fit(select([r.features for r in rows], spec.features), labels)
    return artifact


def fit(spec: ModelSpec, run_id: str, train: Sequence[TrainingRow], holdout: Sequence[TrainingRow]) -> FitResult:
    artifact = _fitted(spec, run_id, train)
    train_predictions, _ = artifact.predict([r.features for r in train])
    holdout_predictions, _ = artifact.predict([r.features for r in holdout])
    return FitResult(
        artifact=artifact,
        metrics=score([r.label for r in holdout], holdout_predictions),
        train_metrics=score([r.label for r in train], train_predictions),
    )


#: Folds of the cross-fit that scores a version's reference rows: each row by a model fitted on the other
#: four fifths of the window, as the served refit scores live rows it never saw.
CROSS_FIT_FOLDS = 5


def cross_fit(
    spec: ModelSpec, run_id: str, rows: Sequence[TrainingRow], scored: np.ndarray, folds: int, fallback: ModelArtifact
) -> tuple[list[LabelValue], list[float | None]]:
    """Out-of-fold predictions of the rows at ``scored``: the run's estimator fitted ``folds`` times.

    The folds are a shuffle of the window seeded by the run, so they are the
    same for the same run. A fold whose other rows hold one class cannot be
    fitted; its rows are scored by ``fallback`` instead.
    """
    fold_of = np.random.default_rng(zlib.crc32(f"{run_id}:folds".encode())).permutation(len(rows)) % folds
    scored_fold = fold_of[scored]
    predictions: list[LabelValue] = [0] * len(scored)
    probabilities: list[float | None] = [None] * len(scored)
    for fold in range(folds):
        inside = np.flatnonzero(scored_fold == fold).tolist()
        if not inside:
            continue
        try:
            model = _fitted(spec, run_id, [row for row, f in zip(rows, fold_of, strict=True) if f != fold])
        except SingleClassError:
            model = fallback
        labels, chances = model.predict([rows[int(scored[j])].features for j in inside])
        for j, label, chance in zip(inside, labels, chances, strict=True):
            predictions[j], probabilities[j] = label, chance
    return predictions, probabilities


def reference_sample(
    spec: ModelSpec,
    run_id: str,
    artifact: ModelArtifact,
    rows: Sequence[TrainingRow],
    holdout: Sequence[TrainingRow],
    size: int,
    folds: int = CROSS_FIT_FOLDS,
) -> ReferenceSample:
    """What monitoring compares the live stream with: ``size`` rows of the window, their features and how a
    version like this one scores rows it never saw.

    The features are sampled from the whole window the version was built on.
    The prediction columns are the same rows' out-of-fold predictions
    (``cross_fit``): the served model scores live rows it did not train on,
    and a model scoring its own training rows is surer of itself than that.
    A reference of in-sample probabilities (the refit's, on a holdout it
    trained on) made prediction drift fire on a noisy stream whose concept
    had not changed, and one of the gated model's (fitted on seven tenths of
    the window, then compared with a refit on all of it) fired at once. Each
    fold's model is fitted on four fifths of the window, nearest to the
    refit's whole. The calibration comes from the gated model on the holdout:
    the model the gate judged, on rows it never saw.

    >>> from datetime import datetime, UTC
    >>> spec = ModelSpec(name="m", feature_view="v", features=["x"], estimator="logistic_regression")
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rows = [TrainingRow(str(i), "e", t, {"x": float(i % 10)}, int(i % 10 > 4)) for i in range(100)]
    >>> result = fit(spec, "run", rows[:70], rows[70:])
    >>> sample = reference_sample(spec, "run", result.artifact, rows, rows[70:], size=40)
    >>> len(sample.features["x"]), len(sample.predictions), all(sample.correct), sample.window_rows
    (40, 40, True, 100)
    """
    chosen = sample_indices(len(rows), size, run_id)
    gated, gated_probabilities = artifact.predict([r.features for r in holdout])
    gated_correct = [prediction == row.label for prediction, row in zip(gated, holdout, strict=True)]
    calibrated = [(p, c) for p, c in zip(gated_probabilities, gated_correct, strict=True) if p is not None]
    predictions, probabilities = cross_fit(spec, run_id, rows, chosen, folds, artifact)
    return ReferenceSample(
        model_name=spec.name,
        run_id=run_id,
        features=feature_columns([r.features for r in rows], spec.features, chosen),
        predictions=predictions,
        probabilities=probabilities,
        correct=[p == rows[i].label for p, i in zip(predictions, chosen.tolist(), strict=True)],
        calibration=Calibration.fit([p for p, _ in calibrated], [c for _, c in calibrated]),
        window_rows=len(rows),
    )


def refit(spec: ModelSpec, run_id: str, rows: Sequence[TrainingRow]) -> ModelArtifact:
    """The run's estimator and parameters fitted again on every row of its window, training and holdout.

    The gate judges the model fitted without the holdout; the version serves
    this one. After a drift the holdout is the newest part of the new concept,
    so leaving it out of the served model would waste the data that matters
    most; the gate's evidence is about the recipe on this window, and the
    registry then treats the whole window as seen by the model, keeping it out
    of the next gate's holdout.
    """
    return _fitted(spec, run_id, rows)


def holdout_record(row: TrainingRow) -> dict[str, Any]:
    """A holdout row as the registry reads it; the event time lets it leave out rows a champion trained on.

    >>> from datetime import datetime, UTC
    >>> holdout_record(TrainingRow("e1", "c", datetime(2026, 1, 1, tzinfo=UTC), {"x": 1.0}, 0))
    {'event_id': 'e1', 'event_time': '2026-01-01T00:00:00+00:00', 'features': {'x': 1.0}, 'label': 0}
    """
    return {
        "event_id": row.event_id,
        "event_time": row.event_time.isoformat(),
        "features": row.features,
        "label": row.label,
    }
