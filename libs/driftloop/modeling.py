"""The model artifact format that training writes and registry and deployment read.

An artifact is a joblib blob of a scikit-learn pipeline plus the feature names
it expects, so any process can score rows given as plain dicts, the same way
the stream and the REST API present them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from driftloop.contracts import utcnow
from driftloop.contracts.events import FeatureValue, LabelValue

ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
}


def build_pipeline(estimator: str, params: Mapping[str, Any]) -> Pipeline:
    """A DictVectorizer front so rows stay dicts: strings are one-hot encoded, numbers pass through."""
    steps: list[BaseEstimator] = [DictVectorizer(sparse=False)]
    if estimator == "logistic_regression":
        steps.append(StandardScaler())
    steps.append(ESTIMATORS[estimator](**params))
    return make_pipeline(*steps)


def _clean(value: FeatureValue) -> float | str:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    return value


def select(rows: Sequence[Mapping[str, FeatureValue]], feature_names: Sequence[str]) -> list[dict[str, float | str]]:
    """The model's features from each row; absent ones become NaN, which the estimators tolerate."""
    return [{name: _clean(row.get(name)) for name in feature_names} for row in rows]


@dataclass
class ModelArtifact:
    model_name: str
    run_id: str
    feature_names: list[str]
    pipeline: Pipeline
    trained_at: datetime = field(default_factory=utcnow)

    def predict(self, rows: Sequence[Mapping[str, FeatureValue]]) -> tuple[list[LabelValue], list[float | None]]:
        """Predicted class and its probability for each row."""
        if not rows:
            return [], []
        X = select(rows, self.feature_names)
        labels = self.pipeline.predict(X)
        if hasattr(self.pipeline, "predict_proba"):
            probabilities: list[float | None] = [float(p) for p in np.max(self.pipeline.predict_proba(X), axis=1)]
        else:
            probabilities = [None] * len(rows)
        return [_python(v) for v in labels], probabilities

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        joblib.dump(self, buffer, compress=3)
        return buffer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> ModelArtifact:
        artifact = joblib.load(io.BytesIO(data))
        if not isinstance(artifact, ModelArtifact):
            raise TypeError(f"not a driftloop model artifact: {type(artifact).__name__}")
        return artifact


def _python(value: Any) -> LabelValue:
    """numpy scalars are not JSON; labels leave this module as plain Python values."""
    return value.item() if isinstance(value, np.generic) else value  # type: ignore[no-any-return]


def score(y_true: Sequence[LabelValue], y_pred: Sequence[LabelValue]) -> dict[str, float]:
    """The metrics the promotion gate may compare on, all higher-is-better."""
    average = "binary" if set(y_true) <= {0, 1} and set(y_pred) <= {0, 1} else "macro"
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average=average, zero_division=0)),
        "rows": float(len(y_true)),
    }
