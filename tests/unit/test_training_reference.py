"""The reference sample training stores with a version, read back from the artifact store as monitoring would."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from river.datasets import synth

from driftloop.artifacts import ArtifactNotFound, LocalArtifactStore
from driftloop.config import AccuracyEstimation, DataDriftPolicy, ModelSpec
from driftloop.offline import TrainingRow
from driftloop.reference import Calibration, ReferenceSample, sample_indices
from driftloop.services.monitoring.datadrift import PREDICTION, PROBABILITY, DataDriftDetector, ReferenceProfile
from driftloop.services.monitoring.estimation import AccuracyEstimator
from driftloop.services.training.domain import fit, reference_sample, refit, time_split

FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]
SPEC = ModelSpec(
    name="loan-approval", feature_view="applications", features=FEATURES, params={"max_iter": 50, "random_state": 0}
)
START = datetime(2026, 3, 1, tzinfo=UTC)


def agrawal(n: int, seed: int, function: int = 0) -> list[TrainingRow]:
    return [
        TrainingRow(f"{seed}-{i}", f"c{i % 50}", START + timedelta(seconds=i), dict(x), int(y))
        for i, (x, y) in enumerate(synth.Agrawal(classification_function=function, seed=seed).take(n))
    ]


@pytest.fixture(scope="module")
def built() -> tuple[object, ReferenceSample, list[TrainingRow]]:
    rows = agrawal(3000, seed=1)
    train, holdout = time_split(rows, 0.3)
    result = fit(SPEC, "run-1", train, holdout)
    return result, reference_sample(SPEC, "run-1", result.artifact, rows, holdout, size=2000), rows


def test_the_reference_is_stored_beside_the_model_and_read_back_whole(
    tmp_path: Path, built: tuple[object, ReferenceSample, list[TrainingRow]]
) -> None:
    result, reference, rows = built
    store = LocalArtifactStore(tmp_path)
    uri = store.put("models/loan-approval/run-1/reference.json", reference.to_bytes())
    assert uri.startswith("file://") and uri.endswith("/models/loan-approval/run-1/reference.json")
    read = ReferenceSample.from_bytes(store.get(uri))
    assert read == reference
    assert list(read.features) == FEATURES and {len(c) for c in read.features.values()} == {2000}
    assert read.window_rows == 3000 and len(read.predictions) == len(read.probabilities) == 2000
    accuracy = result.metrics["accuracy"]  # type: ignore[attr-defined]
    assert abs(sum(read.correct) / 2000 - accuracy) < 0.02, "out of fold, about as right as on the holdout"
    with pytest.raises(ArtifactNotFound):
        store.get("models/loan-approval/run-2/reference.json")


def test_the_sample_is_a_uniform_draw_of_the_window_and_the_same_for_the_same_run(
    built: tuple[object, ReferenceSample, list[TrainingRow]],
) -> None:
    result, reference, rows = built
    salaries = np.array([r.features["salary"] for r in rows])
    sampled = np.array(reference.features["salary"])
    assert len(set(sampled.tolist())) == 2000 and set(sampled.tolist()) <= set(salaries.tolist())
    assert abs(sampled.mean() - salaries.mean()) < 3 * salaries.std() / np.sqrt(2000)
    again = reference_sample(SPEC, "run-1", result.artifact, rows, rows[2100:], size=2000)  # type: ignore[attr-defined]
    assert again.features == reference.features


def test_a_document_that_is_not_a_reference_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="not a driftloop reference sample"):
        ReferenceSample.from_bytes(b'{"format": "something.else"}')


def test_monitoring_reads_the_stored_reference_and_sees_a_salary_shift_and_nothing_on_fresh_data(
    built: tuple[object, ReferenceSample, list[TrainingRow]],
) -> None:
    result, reference, _ = built
    artifact = result.artifact  # type: ignore[attr-defined]
    policy = DataDriftPolicy()
    profile = ReferenceProfile.from_sample(ReferenceSample.from_bytes(reference.to_bytes()), policy)
    assert set(profile.columns) == {*FEATURES, PREDICTION, PROBABILITY}

    def scored(rows: list[TrainingRow]) -> list[dict[str, object]]:
        labels, probabilities = artifact.predict([r.features for r in rows])
        return [
            {**r.features, PREDICTION: label, PROBABILITY: p}
            for r, label, p in zip(rows, labels, probabilities, strict=True)
        ]

    watcher = DataDriftDetector("loan-approval", 1, profile, policy)
    fresh = scored(agrawal(4000, seed=2))
    assert [f.feature for c in watcher.update(fresh) for f in c.findings] == []  # type: ignore[arg-type]
    richer = agrawal(2000, seed=3)
    for row in richer:
        row.features["salary"] = float(row.features["salary"]) * 1.3  # type: ignore[arg-type]
    moved = {f.feature for c in watcher.update(scored(richer)) for f in c.findings}  # type: ignore[arg-type]
    assert "salary" in moved and moved <= {"salary", PREDICTION, PROBABILITY}


def test_the_stored_calibration_estimates_the_accuracy_of_fresh_data(
    built: tuple[object, ReferenceSample, list[TrainingRow]],
) -> None:
    result, reference, _ = built
    artifact = result.artifact  # type: ignore[attr-defined]
    fresh = agrawal(5000, seed=4)
    labels, probabilities = artifact.predict([r.features for r in fresh])
    correct = np.array([label == r.label for label, r in zip(labels, fresh, strict=True)])
    estimator = AccuracyEstimator("loan-approval", 1, reference.calibration, AccuracyEstimation(window=5000))
    estimator.update(probabilities)
    estimate = estimator.estimate()
    assert estimate is not None and estimate.covers(float(correct.mean()))


def sea(n: int, seed: int) -> list[TrainingRow]:
    """SEA's first concept with 10 % of labels flipped: a model is never sure, so its probabilities spread."""
    return [
        TrainingRow(f"{seed}-{i}", "e", START + timedelta(seconds=i), {f"x{k + 1}": v for k, v in x.items()}, int(y))
        for i, (x, y) in enumerate(synth.SEA(variant=0, noise=0.1, seed=seed).take(n))
    ]


def test_the_prediction_columns_are_out_of_fold_so_the_served_refit_on_the_same_concept_is_no_drift() -> None:
    """The served refit scores live rows it never saw. A reference of its probabilities on a holdout it trained
    on is surer than that, and on a noisy stream ``@probability`` drifted in check after check; the cross-fit
    reference, each row scored by a fit on the other four fifths of the window, is not."""
    spec = ModelSpec(
        name="sea", feature_view="v", features=["x1", "x2", "x3"], params={"max_iter": 200, "random_state": 0}
    )
    rows = sea(1500, seed=1)
    train, holdout = time_split(rows, 0.3)
    gated = fit(spec, "run-1", train, holdout)
    served = refit(spec, "run-1", rows)
    fresh = sea(20_000, seed=2)
    labels, probabilities = served.predict([r.features for r in fresh])
    stream = [
        {**r.features, PREDICTION: y, PROBABILITY: p} for r, y, p in zip(fresh, labels, probabilities, strict=True)
    ]

    def drifted_checks(reference: ReferenceSample) -> int:
        policy = DataDriftPolicy()
        detector = DataDriftDetector("sea", 1, ReferenceProfile.from_sample(reference, policy), policy)
        checks = detector.update(stream)  # type: ignore[arg-type]
        assert len(checks) == 80
        return sum(r.drifted for check in checks for r in check.results)

    reference = reference_sample(spec, "run-1", gated.artifact, rows, holdout, size=2000)
    in_sample, in_sample_probabilities = served.predict([r.features for r in holdout])
    of_refit = replace(reference, predictions=in_sample, probabilities=in_sample_probabilities)
    assert drifted_checks(of_refit) > 10, "the fault this guards against"
    assert drifted_checks(reference) == 0
    gated_labels, gated_probabilities = gated.artifact.predict([r.features for r in holdout])
    right = [y == r.label for y, r in zip(gated_labels, holdout, strict=True)]
    assert reference.calibration == Calibration.fit(gated_probabilities, right), (  # type: ignore[arg-type]
        "calibrated on the model the gate judged, on the holdout it never saw"
    )


def test_the_cross_fit_scores_every_row_with_a_model_that_never_saw_it() -> None:
    """Labels that are coin flips: a forest that scores rows it trained on is right about nearly all of them, one
    that never saw them about half; the reference must be the second, and the same for the same run."""
    rng = random.Random(8)
    rows = [
        TrainingRow(
            str(i), "e", START + timedelta(seconds=i), {"x": rng.random(), "y": rng.random()}, rng.randint(0, 1)
        )
        for i in range(1000)
    ]
    spec = ModelSpec(
        name="m", feature_view="v", features=["x", "y"], estimator="random_forest", params={"random_state": 0}
    )
    train, holdout = time_split(rows, 0.3)
    gated = fit(spec, "run-x", train, holdout)
    reference = reference_sample(spec, "run-x", gated.artifact, rows, holdout, size=500)
    chosen = [rows[i] for i in sample_indices(1000, 500, "run-x")]
    memorised, _ = refit(spec, "run-x", rows).predict([r.features for r in chosen])
    assert sum(y == r.label for y, r in zip(memorised, chosen, strict=True)) > 450, "the fault this guards against"
    assert 0.4 < sum(reference.correct) / 500 < 0.6
    assert reference_sample(spec, "run-x", gated.artifact, rows, holdout, size=500) == reference
