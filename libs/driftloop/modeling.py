"""The model artifact format that training writes and registry and deployment read.

An artifact is a skops file of a scikit-learn pipeline plus the feature names
it expects, so any process can score rows given as plain dicts, the same way
the stream and the REST API present them. Unlike a pickle, a skops file is
data: loading it builds only the types skops trusts (builtins, numpy arrays,
scikit-learn's estimators) and those in ``TRUSTED_TYPES``, and refuses a file
that names anything else, so a forged artifact cannot run code. Joblib
artifacts of earlier driftloop versions are refused, not loaded: retraining
writes the model again in this format.

Scoring goes through a ``Scorer`` built once per loaded artifact: serving
scores a row or a few at a time, where the pipeline's generic path costs more
than the model (a second model call for the labels, the vectorizer's sparse
detour, OpenMP threads fanned out over a handful of rows).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import skops.io
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from skops.io.exceptions import UntrustedTypesFoundException
from threadpoolctl import ThreadpoolController

from driftloop.artifacts import ArtifactRefused
from driftloop.contracts import utcnow
from driftloop.contracts.events import FeatureValue, LabelValue

ESTIMATORS: dict[str, type[BaseEstimator]] = {
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
}


#: What the pipelines ``build_pipeline`` makes hold beyond the types skops trusts by default: the fitted trees
#: of the two tree ensembles. Nothing else is loaded; a file naming another type is refused.
TRUSTED_TYPES: list[str] = [
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]
#: The steps a loaded pipeline may consist of: the ones ``build_pipeline`` uses.
PIPELINE_STEPS: tuple[type[BaseEstimator], ...] = (DictVectorizer, StandardScaler, *ESTIMATORS.values())
#: Written into every artifact, so a file of another kind, or of a later layout, is told apart.
ARTIFACT_FORMAT = "driftloop.model/skops-1"
#: How every zip file, and so every skops file, begins; joblib and pickle files begin otherwise.
_ZIP_MAGIC = b"PK\x03\x04"


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


#: Batches below this size score on one OpenMP thread. Fanning a few rows out
#: over threads costs more than it saves (the threads mostly wait for each
#: other, and on shared cores for a core), while a large batch, such as the
#: registry scoring a holdout, still gains from every core. The demo's model on
#: two busy cores: 2,000 rows took 13 ms on one thread and 18 ms on two;
#: 10,000 rows 66 ms and 38 ms; and 100 rows at 8 concurrent requests, 6 ms
#: on one thread against 97 ms with OpenMP's default.
PARALLEL_ROWS = 2_000


class _DenseFront:
    """The fitted ``DictVectorizer(sparse=False)`` applied to raw rows, without its sparse detour.

    It writes the same cells the vectorizer would write for ``select(rows)``:
    a number (NaN when absent, 1.0/0.0 for booleans) in the feature's column,
    1 in the ``name=value`` column for a string, nothing for a string or a
    feature the vectorizer never saw. Only the row-building differs, which is
    most of the cost for one row.
    """

    def __init__(self, vectorizer: DictVectorizer, feature_names: Sequence[str]) -> None:
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.dtype = vectorizer.dtype
        self.separator: str = vectorizer.separator
        self.width = len(vectorizer.feature_names_)
        self.columns = [(name, self.vocabulary.get(name)) for name in feature_names]
        self.feature_names = list(feature_names)
        numeric = [column for _, column in self.columns]
        #: When every feature has a number column, rows without strings fill the matrix in one numpy call.
        self.numeric_columns: list[int] | None = None if None in numeric else [c for c in numeric if c is not None]

    def transform(self, rows: Sequence[Mapping[str, FeatureValue]]) -> np.ndarray:
        matrix = np.zeros((len(rows), self.width), dtype=self.dtype)
        if self.numeric_columns is not None:
            cells = [[row.get(name) for name in self.feature_names] for row in rows]
            if not any(isinstance(value, str) for values in cells for value in values):
                # numpy reads None as NaN and booleans as 1.0/0.0, as the vectorizer does.
                matrix[:, self.numeric_columns] = np.array(cells, dtype=self.dtype)
                return matrix
        at_row: list[int] = []
        at_column: list[int] = []
        values: list[float] = []
        for i, row in enumerate(rows):
            for name, column in self.columns:
                value = row.get(name)
                if isinstance(value, str):
                    column_of_value = self.vocabulary.get(f"{name}{self.separator}{value}")
                    if column_of_value is not None:
                        at_row.append(i)
                        at_column.append(column_of_value)
                        values.append(1.0)
                elif column is not None:
                    at_row.append(i)
                    at_column.append(column)
                    values.append(math.nan if value is None else float(value))
        matrix[at_row, at_column] = values
        return matrix


class Scorer:
    """A loaded artifact made ready to score: one model call per batch, threads chosen by batch size.

    Labels come from ``predict_proba`` (the class of the highest
    probability, which is what ``predict`` computes for every estimator in
    ``ESTIMATORS``), so the model runs once for both outputs; an estimator
    without probabilities falls back to ``predict``.
    """

    def __init__(self, feature_names: Sequence[str], pipeline: Pipeline) -> None:
        self.feature_names = list(feature_names)
        steps = [step for _, step in pipeline.steps]
        front, *self.middle, self.estimator = steps
        self.front: _DenseFront | None = None
        if isinstance(front, DictVectorizer) and not front.sparse and hasattr(front, "vocabulary_"):
            self.front = _DenseFront(front, self.feature_names)
        else:
            self.middle.insert(0, front)
        self.probabilistic = hasattr(self.estimator, "predict_proba")
        # Scanning the loaded native libraries takes milliseconds, so it happens once, at load.
        self.threads = ThreadpoolController()

    def matrix(self, rows: Sequence[Mapping[str, FeatureValue]]) -> Any:
        """What the final estimator sees: the pipeline's transformers applied to ``rows``."""
        data: Any = self.front.transform(rows) if self.front else select(rows, self.feature_names)
        for step in self.middle:
            data = step.transform(data)
        return data

    def predict(self, rows: Sequence[Mapping[str, FeatureValue]]) -> tuple[list[LabelValue], list[float | None]]:
        if not rows:
            return [], []
        if len(rows) >= PARALLEL_ROWS:
            return self._predict(rows)
        with self.threads.limit(limits=1, user_api="openmp"):
            return self._predict(rows)

    def _predict(self, rows: Sequence[Mapping[str, FeatureValue]]) -> tuple[list[LabelValue], list[float | None]]:
        data = self.matrix(rows)
        if not self.probabilistic:
            return [_python(v) for v in self.estimator.predict(data)], [None] * len(rows)
        probabilities = self.estimator.predict_proba(data)
        labels = self.estimator.classes_.take(np.argmax(probabilities, axis=1))
        return [_python(v) for v in labels], probabilities.max(axis=1).tolist()


@dataclass
class ModelArtifact:
    model_name: str
    run_id: str
    feature_names: list[str]
    pipeline: Pipeline
    trained_at: datetime = field(default_factory=utcnow)

    def scorer(self) -> Scorer:
        """Built on first use and kept; it is not part of the stored artifact."""
        scorer: Scorer | None = self.__dict__.get("_scorer")
        if scorer is None:
            scorer = self.__dict__["_scorer"] = Scorer(self.feature_names, self.pipeline)
        return scorer

    def predict(self, rows: Sequence[Mapping[str, FeatureValue]]) -> tuple[list[LabelValue], list[float | None]]:
        """Predicted class and its probability for each row."""
        return self.scorer().predict(rows)

    def to_bytes(self) -> bytes:
        state = {
            "format": ARTIFACT_FORMAT,
            "model_name": self.model_name,
            "run_id": self.run_id,
            "feature_names": list(self.feature_names),
            "trained_at": self.trained_at.isoformat(),
            "pipeline": self.pipeline,
        }
        data: bytes = skops.io.dumps(state, compression=zipfile.ZIP_DEFLATED)
        return data

    @staticmethod
    def from_bytes(data: bytes) -> ModelArtifact:
        """The artifact in ``data``, or ``ArtifactRefused`` saying why it is not loaded; nothing in it runs."""
        if not data.startswith(_ZIP_MAGIC):
            raise ArtifactRefused(
                "not a skops model artifact (a joblib/pickle model of an earlier driftloop?): such files run code "
                "when loaded, so they are refused; retrain the model (driftloop retrain, or "
                "POST /v1/models/{name}/retrain on training) to write it in the safe format"
            )
        try:
            state = skops.io.loads(data, trusted=TRUSTED_TYPES)
        except UntrustedTypesFoundException as exc:
            raise ArtifactRefused(f"the artifact holds types outside the trusted list: {exc}") from exc
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ArtifactRefused(f"unreadable skops artifact: {exc!r}") from exc
        return _artifact(state)


def _artifact(state: Any) -> ModelArtifact:
    """The loaded state as an artifact, if it has the layout ``to_bytes`` writes and a pipeline of known steps."""
    if not isinstance(state, dict) or state.get("format") != ARTIFACT_FORMAT:
        raise ArtifactRefused(f"not a driftloop model artifact of format {ARTIFACT_FORMAT}")
    pipeline, names = state.get("pipeline"), state.get("feature_names")
    if not isinstance(pipeline, Pipeline) or not all(isinstance(s, PIPELINE_STEPS) for _, s in pipeline.steps):
        raise ArtifactRefused("the artifact's pipeline has steps driftloop does not build")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ArtifactRefused("the artifact's feature names are not a list of strings")
    try:
        trained_at = datetime.fromisoformat(str(state.get("trained_at")))
    except ValueError as exc:
        raise ArtifactRefused(f"the artifact's training time is unreadable: {exc}") from exc
    return ModelArtifact(
        model_name=str(state.get("model_name")),
        run_id=str(state.get("run_id")),
        feature_names=names,
        pipeline=pipeline,
        trained_at=trained_at,
    )


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
