"""Scoring an artifact: one model call, yet exactly the labels and probabilities of the fitted pipeline."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.feature_extraction import DictVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from driftloop.contracts.events import FeatureValue
from driftloop.modeling import ESTIMATORS, PARALLEL_ROWS, ModelArtifact, build_pipeline, select

FEATURES = ["salary", "age", "colour", "owner", "zone"]
COLOURS = ["red", "green", "blue"]


def _row(rng: random.Random) -> dict[str, FeatureValue]:
    return {
        "salary": rng.uniform(0, 100_000),
        "age": rng.randint(18, 90),
        "colour": rng.choice(COLOURS),
        "owner": rng.random() < 0.5,
        "zone": rng.choice(["north", "south", 3, 7.5]),
    }


def _label(row: dict[str, FeatureValue]) -> str:
    salary = float(row["salary"])  # type: ignore[arg-type]
    if row["colour"] == "red" and salary > 40_000:
        return "approve"
    return "review" if row["owner"] else "reject"


def _queries(rng: random.Random, *, numeric_missing: bool) -> list[dict[str, FeatureValue]]:
    """Rows as clients send them: unseen categories, absent features, strings where numbers were, extra keys."""
    rows = [_row(rng) for _ in range(200)]
    rows += [
        {**_row(rng), "colour": "purple"},
        {**_row(rng), "colour": None},
        {k: v for k, v in _row(rng).items() if k != "colour"},
        {**_row(rng), "unknown": 1.0, "zone": "east"},
        {**_row(rng), "owner": "yes"},
        {**_row(rng), "age": "forty"},
    ]
    if numeric_missing:
        rows += [{**_row(rng), "salary": None}, {k: v for k, v in _row(rng).items() if k != "age"}, {}]
    return rows


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_labels_and_probabilities_equal_the_pipelines_on_mixed_rows(estimator: str) -> None:
    rng = random.Random(7)
    training = [_row(rng) for _ in range(600)]
    params = {"max_iter": 30} if estimator == "hist_gradient_boosting" else {}
    if estimator == "random_forest":
        params = {"n_estimators": 20, "random_state": 0}
    pipeline = build_pipeline(estimator, params)
    pipeline.fit(select(training, FEATURES), [_label(r) for r in training])
    artifact = ModelArtifact("m", "r", FEATURES, pipeline)
    # Logistic regression cannot take NaN, whichever way the rows reach it.
    queries = _queries(rng, numeric_missing=estimator != "logistic_regression")

    labels, probabilities = artifact.predict(queries)

    selected = select(queries, FEATURES)
    assert labels == list(pipeline.predict(selected))
    assert probabilities == [float(p) for p in np.max(pipeline.predict_proba(selected), axis=1)]
    assert all(type(label) is str for label in labels)
    assert set(labels) == {"approve", "review", "reject"}
    # One row at a time is the serving case; a linear model's sums may round differently than in a batch.
    for row in queries:
        one = select([row], FEATURES)
        assert artifact.predict([row]) == (
            list(pipeline.predict(one)),
            [float(np.max(pipeline.predict_proba(one)))],
        )


def test_the_matrix_is_the_vectorizers_cell_for_cell() -> None:
    rng = random.Random(3)
    pipeline = build_pipeline("hist_gradient_boosting", {"max_iter": 5})
    training = [_row(rng) for _ in range(100)]
    pipeline.fit(select(training, FEATURES), [_label(r) for r in training])
    scorer = ModelArtifact("m", "r", FEATURES, pipeline).scorer()
    queries = _queries(rng, numeric_missing=True)
    expected = pipeline[0].transform(select(queries, FEATURES))
    np.testing.assert_array_equal(scorer.matrix(queries), expected)


def test_an_all_numeric_model_builds_its_matrix_in_one_step_and_still_honours_strings() -> None:
    rng = random.Random(5)
    numeric = ["salary", "age", "owner"]
    training = [_row(rng) for _ in range(100)]
    pipeline = build_pipeline("logistic_regression", {})
    pipeline.fit(select(training, numeric), [_label(r) for r in training])
    scorer = ModelArtifact("m", "r", numeric, pipeline).scorer()
    assert scorer.front is not None and scorer.front.numeric_columns is not None
    plain = [_row(rng) for _ in range(20)]
    with_string = [*plain, {**_row(rng), "age": "40"}]
    for queries in (plain, with_string):
        np.testing.assert_array_equal(scorer.front.transform(queries), pipeline[0].transform(select(queries, numeric)))


def test_an_estimator_without_probabilities_falls_back_to_predict() -> None:
    rng = random.Random(11)
    training = [_row(rng) for _ in range(200)]
    pipeline = make_pipeline(DictVectorizer(sparse=False), LinearSVC())
    pipeline.fit(select(training, FEATURES), [_label(r) for r in training])
    queries = [_row(rng) for _ in range(30)]
    labels, probabilities = ModelArtifact("m", "r", FEATURES, pipeline).predict(queries)
    assert labels == list(pipeline.predict(select(queries, FEATURES)))
    assert probabilities == [None] * 30


def test_large_batches_and_empty_ones_score_like_the_pipeline() -> None:
    rng = random.Random(13)
    training = [_row(rng) for _ in range(300)]
    pipeline = build_pipeline("hist_gradient_boosting", {"max_iter": 10})
    pipeline.fit(select(training, FEATURES), [_label(r) for r in training])
    artifact = ModelArtifact("m", "r", FEATURES, pipeline)
    queries = [_row(rng) for _ in range(PARALLEL_ROWS)]
    assert artifact.predict(queries)[0] == list(pipeline.predict(select(queries, FEATURES)))
    assert artifact.predict([]) == ([], [])


def test_the_scorer_is_not_stored_with_the_artifact() -> None:
    rng = random.Random(17)
    training = [_row(rng) for _ in range(100)]
    pipeline = build_pipeline("random_forest", {"n_estimators": 5, "random_state": 0})
    pipeline.fit(select(training, FEATURES), [_label(r) for r in training])
    artifact = ModelArtifact("m", "r", FEATURES, pipeline)
    before = artifact.predict(training[:10])
    restored = ModelArtifact.from_bytes(artifact.to_bytes())
    assert "_scorer" not in restored.__dict__
    assert restored.predict(training[:10]) == before
