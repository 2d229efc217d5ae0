"""The artifact store behaves the same on a local directory and on S3 (moto's server via ``minio``).

Services pick the store from settings and hand each other URIs, so every behaviour a service relies on
is checked against both.
"""

from __future__ import annotations

import random

import pytest

from driftloop.artifacts import ArtifactNotFound, ArtifactStore, open_store
from driftloop.settings import DriftloopSettings

MIB = 1024 * 1024


def test_put_returns_a_uri_of_the_store_scheme_and_the_blob_reads_back_by_uri_and_by_key(
    store: ArtifactStore, store_settings: DriftloopSettings
) -> None:
    uri = store.put("models/m/run-1/model.skops", b"model bytes")
    assert uri.split("://")[0] == store_settings.artifacts.split("://")[0]
    assert uri == store.uri("models/m/run-1/model.skops")
    assert store.get(uri) == b"model bytes"
    assert store.get("models/m/run-1/model.skops") == b"model bytes"


def test_a_missing_blob_raises_not_found_by_key_and_by_uri(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        store.get("models/none/model.skops")
    with pytest.raises(ArtifactNotFound):
        store.get(store.uri("models/none/model.skops"))


def test_list_returns_exactly_the_keys_under_the_prefix_sorted(
    store: ArtifactStore, store_settings: DriftloopSettings
) -> None:
    for key in ("a/2", "a/1", "a/sub/3", "ab/4", "b/5"):
        store.put(key, key.encode())
    # A second store beside this one (same bucket or parent folder) must not leak into its listings.
    beside = f"{store_settings.artifacts}-other"
    neighbour = open_store(store_settings.model_copy(update={"artifact_uri": beside}))
    neighbour.put("a/0", b"elsewhere")

    assert list(store.list("a/")) == ["a/1", "a/2", "a/sub/3"]
    assert list(store.list("a/sub/")) == ["a/sub/3"]
    assert list(store.list("")) == ["a/1", "a/2", "a/sub/3", "ab/4", "b/5"]
    assert list(store.list("nothing/")) == []
    assert list(neighbour.list("a/")) == ["a/0"]


def test_overwriting_a_key_replaces_its_content(store: ArtifactStore) -> None:
    store.put("reports/latest.json", b'{"version": 1, "padding": "longer than what replaces it"}')
    uri = store.put("reports/latest.json", b'{"version": 2}')
    assert store.get("reports/latest.json") == b'{"version": 2}'
    assert store.get(uri) == b'{"version": 2}'
    assert list(store.list("reports/")) == ["reports/latest.json"]


def test_a_fresh_store_from_the_same_settings_reads_what_another_wrote(
    store: ArtifactStore, store_settings: DriftloopSettings
) -> None:
    """What another service process does with a URI it received in an event."""
    uri = store.put("models/m/run-2/model.skops", b"trained elsewhere")
    fresh = open_store(store_settings)
    assert fresh.get(uri) == b"trained elsewhere"
    assert fresh.get("models/m/run-2/model.skops") == b"trained elsewhere"
    assert list(fresh.list("models/")) == ["models/m/run-2/model.skops"]


@pytest.mark.parametrize(
    "data", [b"\x00", b"\x00binary\x00blob\x00", bytes(range(256)) * 4], ids=["nul", "embedded", "all"]
)
def test_binary_data_with_nul_bytes_round_trips(store: ArtifactStore, data: bytes) -> None:
    assert store.get(store.put("blobs/binary", data)) == data


@pytest.mark.parametrize("size", [5 * MIB, 5 * MIB + 1], ids=["5MiB", "5MiB+1"])
def test_a_5_mib_blob_round_trips(store: ArtifactStore, size: int) -> None:
    """5 MiB is minio's part size: that much goes up in one request, one byte more as a multipart upload."""
    data = random.Random(size).randbytes(size)
    uri = store.put("models/big/model.skops", data)
    assert store.get(uri) == data
    assert store.get("models/big/model.skops") == data


def test_keys_with_spaces_and_url_characters_round_trip_by_uri(store: ArtifactStore) -> None:
    uri = store.put("models/m/run 1/#v?.joblib", b"odd")
    assert store.get(uri) == b"odd"


def test_a_prefix_lists_a_folder_with_or_without_its_slash(store: ArtifactStore) -> None:
    store.put("a/1", b"1")
    store.put("ab/2", b"2")
    assert list(store.list("a")) == list(store.list("a/")) == ["a/1"]
