"""Model artifacts are skops files: they load without running code, and anything else is refused."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import joblib
import pytest
import skops.io
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from driftloop.artifacts import ArtifactRefused
from driftloop.modeling import ARTIFACT_FORMAT, ESTIMATORS, ModelArtifact, build_pipeline, select

ROWS = [{"x": float(i % 7), "colour": "red" if i % 3 else "blue"} for i in range(120)]
LABELS = [int(row["x"] > 3) for row in ROWS]


def _artifact(estimator: str) -> ModelArtifact:
    params = {"n_estimators": 3, "random_state": 0} if estimator == "random_forest" else {}
    pipeline = build_pipeline(estimator, params)
    pipeline.fit(select(ROWS, ["x", "colour"]), LABELS)
    return ModelArtifact("m", "run-1", ["x", "colour"], pipeline)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_round_trips_through_a_skops_file(estimator: str) -> None:
    artifact = _artifact(estimator)
    data = artifact.to_bytes()
    assert zipfile.is_zipfile(io.BytesIO(data))
    loaded = ModelArtifact.from_bytes(data)
    assert (loaded.model_name, loaded.run_id, loaded.feature_names) == ("m", "run-1", ["x", "colour"])
    assert loaded.trained_at == artifact.trained_at
    assert loaded.predict(ROWS) == artifact.predict(ROWS)


def test_a_joblib_artifact_of_an_earlier_version_is_refused_with_the_fix() -> None:
    buffer = io.BytesIO()
    joblib.dump(_artifact("logistic_regression"), buffer, compress=3)
    with pytest.raises(ArtifactRefused, match="retrain the model"):
        ModelArtifact.from_bytes(buffer.getvalue())


class _Payload:
    """What an attacker pickles: loading it would create a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps(_Payload(marker))
    with pytest.raises(ArtifactRefused):
        ModelArtifact.from_bytes(data)
    assert not marker.exists()


def _crafted(pipeline: object) -> bytes:
    state = {"format": ARTIFACT_FORMAT, "model_name": "m", "run_id": "r", "feature_names": ["x"]}
    return skops.io.dumps({**state, "trained_at": "2026-01-01T00:00:00+00:00", "pipeline": pipeline})


def test_a_skops_file_naming_an_untrusted_type_is_refused_before_anything_is_built() -> None:
    evil = make_pipeline(FunctionTransformer(os.system))
    with pytest.raises(ArtifactRefused, match="outside the trusted list.*system"):
        ModelArtifact.from_bytes(_crafted(evil))


def test_a_trusted_pipeline_of_steps_driftloop_does_not_build_is_refused() -> None:
    other = make_pipeline(LinearSVC())
    other.fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ArtifactRefused, match="steps driftloop does not build"):
        ModelArtifact.from_bytes(_crafted(other))


def test_a_skops_file_of_another_layout_is_refused() -> None:
    with pytest.raises(ArtifactRefused, match="not a driftloop model artifact"):
        ModelArtifact.from_bytes(skops.io.dumps({"format": "something else"}))
    with pytest.raises(ArtifactRefused, match="unreadable skops artifact"):
        ModelArtifact.from_bytes(b"PK\x03\x04 but no zip after it")
