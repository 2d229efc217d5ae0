"""Artifacts on a real store (a local folder and S3 through moto): tampered, crafted or outside ones are refused.

What a service does with a URI that arrived in a Kafka record: read it only inside the configured store,
check its bytes against the SHA-256 recorded at registration, and load it without running anything in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import skops.io
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from driftloop.artifacts import ArtifactRefused, ArtifactStore, open_store, read_verified, sha256_hex
from driftloop.modeling import ARTIFACT_FORMAT, ModelArtifact, build_pipeline, select
from driftloop.settings import DriftloopSettings

ROWS = [{"x": float(i % 9), "colour": "red" if i % 2 else "blue"} for i in range(90)]


def _model(threshold: float) -> bytes:
    pipeline = build_pipeline("logistic_regression", {})
    pipeline.fit(select(ROWS, ["x", "colour"]), [int(r["x"] > threshold) for r in ROWS])  # type: ignore[operator]
    return ModelArtifact("m", f"run-{threshold}", ["x", "colour"], pipeline).to_bytes()


def test_a_model_loads_by_the_checksum_recorded_for_it_and_a_tampered_one_is_refused(store: ArtifactStore) -> None:
    genuine = _model(4.0)
    uri = store.put("models/m/run-1/model.skops", genuine)
    recorded = sha256_hex(genuine)
    assert ModelArtifact.from_bytes(read_verified(store, uri, recorded)).run_id == "run-4.0"

    # Someone with write access to the store swaps in another valid model under the same key.
    store.put("models/m/run-1/model.skops", _model(1.0))
    with pytest.raises(ArtifactRefused, match=f"not the {recorded} recorded at registration"):
        read_verified(store, uri, recorded)


def test_a_stored_skops_file_naming_an_untrusted_type_is_refused_even_with_a_matching_checksum(
    store: ArtifactStore, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    crafted = skops.io.dumps(
        {
            "format": ARTIFACT_FORMAT,
            "model_name": "m",
            "run_id": "evil",
            "feature_names": ["x"],
            "trained_at": "2026-01-01T00:00:00+00:00",
            "pipeline": make_pipeline(FunctionTransformer(os.system, kw_args={"command": f"touch {marker}"})),
        }
    )
    uri = store.put("models/m/evil/model.skops", crafted)
    data = read_verified(store, uri, sha256_hex(crafted))
    with pytest.raises(ArtifactRefused, match="outside the trusted list"):
        ModelArtifact.from_bytes(data)
    assert not marker.exists()


def test_uris_outside_the_store_are_refused_though_the_blob_they_name_exists(
    store: ArtifactStore, store_settings: DriftloopSettings
) -> None:
    """Refused, not 'not found': the check is on the URI, before anything is read."""
    beside = open_store(store_settings.model_copy(update={"artifact_uri": f"{store_settings.artifacts}-other"}))
    elsewhere = beside.put("models/m/run-1/model.skops", _model(4.0))
    inside = store.put("models/m/run-1/model.skops", b"ours")
    scheme = "s3" if elsewhere.startswith("s3://") else "file"
    outside = [
        elsewhere,
        inside.replace("models/m/run-1", "models/m/../../artifacts-other/models/m/run-1"),
        "../artifacts-other/models/m/run-1/model.skops",
        "s3://another-bucket/artifacts/models/m/run-1/model.skops" if scheme == "s3" else "file:///etc/hostname",
        "file:///etc/hostname" if scheme == "s3" else "s3://bucket/models/m/run-1/model.skops",
    ]
    for uri in outside:
        with pytest.raises(ArtifactRefused):
            store.get(uri)
    with pytest.raises(ArtifactRefused):
        store.put("../escaped", b"x")
    assert store.get(inside) == b"ours"
