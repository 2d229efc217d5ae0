"""Artifact and offline stores behave the same on a local directory and on S3 (moto's server via ``minio``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from driftloop.artifacts import ArtifactNotFound, ArtifactStore, open_store
from driftloop.contracts import FeatureVector, LabelEvent, utcnow
from driftloop.offline import OfflineStore
from driftloop.settings import DriftloopSettings


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: DriftloopSettings) -> DriftloopSettings:
    if request.param == "local":
        return settings.model_copy(update={"artifact_uri": f"file://{settings.home}/artifacts"})
    s3: DriftloopSettings = request.getfixturevalue("s3_settings")
    return s3


@pytest.fixture
def store(store_settings: DriftloopSettings) -> ArtifactStore:
    return open_store(store_settings)


def test_put_returns_a_uri_that_any_process_can_read(store: ArtifactStore, store_settings: DriftloopSettings) -> None:
    uri = store.put("models/m/run/model.joblib", b"\x00binary\x00blob")
    assert uri.split("://")[0] == store_settings.artifacts.split("://")[0]
    fresh = open_store(store_settings)
    assert fresh.get(uri) == b"\x00binary\x00blob"
    assert fresh.get("models/m/run/model.joblib") == b"\x00binary\x00blob"


def test_missing_blobs_raise_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        store.get("models/none/model.joblib")


def test_list_returns_exactly_the_keys_under_a_prefix_sorted(store: ArtifactStore) -> None:
    for key in ("a/2", "a/1", "a/sub/3", "ab/4", "b/5"):
        store.put(key, key.encode())
    assert list(store.list("a/")) == ["a/1", "a/2", "a/sub/3"]
    assert list(store.list("nothing/")) == []


def test_overwrite_replaces_and_large_blobs_round_trip(store: ArtifactStore) -> None:
    store.put("k", b"old")
    store.put("k", b"new")
    assert store.get("k") == b"new"
    big = bytes(range(256)) * (5 * 4096)
    assert store.get(store.put("big", big)) == big


def test_training_sets_are_point_in_time_correct_and_deduplicated(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v")
    now = utcnow()
    vectors = [
        FeatureVector(
            event_id=f"e{i}",
            entity_id="c",
            event_time=now - timedelta(minutes=10 - i),
            feature_view="v",
            features={"x": float(i)},
            label=None if i % 2 else i % 3,
            occurred_at=now - timedelta(minutes=9 - i),
        )
        for i in range(6)
    ]
    offline.append_vectors(vectors[:4], partition=0, first_offset=0)
    offline.append_vectors(vectors[2:], partition=0, first_offset=2)  # a replayed, overlapping batch
    offline.append_labels(
        [
            LabelEvent(event_id="e1", label=1, label_time=now - timedelta(minutes=3)),
            LabelEvent(event_id="e3", label=0, label_time=now + timedelta(minutes=5)),
        ],
        0,
        0,
    )

    rows = offline.training_set(as_of=now)
    assert [(r.event_id, r.label) for r in rows] == [("e0", 0), ("e1", 1), ("e2", 2), ("e4", 1)]
    later = offline.training_set(as_of=now + timedelta(minutes=6))
    assert ("e3", 0) in [(r.event_id, r.label) for r in later], "a label known later joins later"
    assert [r.event_id for r in offline.training_set(as_of=now, since=now - timedelta(minutes=8))] == ["e2", "e4"]
    assert [r.event_id for r in offline.training_set(as_of=now, max_rows=2)] == ["e2", "e4"]
