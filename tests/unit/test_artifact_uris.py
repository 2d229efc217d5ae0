"""Artifact URIs stay inside the configured store, and a model's bytes must match the checksum recorded for them."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from driftloop.artifacts import ArtifactRefused, checked_key, file_key, s3_key, sha256_hex, verify_sha256

ROOT = PurePosixPath("/srv/driftloop/artifacts")


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("models/m/run-1/model.skops", "models/m/run-1/model.skops"),
        ("file:///srv/driftloop/artifacts/models/m/run-1/model.skops", "models/m/run-1/model.skops"),
        ("file://localhost/srv/driftloop/artifacts/a/b", "a/b"),
        ("file:///srv/driftloop/artifacts/models/m/run%201/%23v%3F.skops", "models/m/run 1/#v?.skops"),
    ],
)
def test_file_uris_and_keys_inside_the_folder_give_their_key(uri: str, key: str) -> None:
    assert file_key(uri, ROOT) == key


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:///etc/passwd", "outside the store"),
        ("file:///srv/driftloop/artifacts-other/models/m.skops", "outside the store"),
        ("file:///srv/driftloop/artifacts/../secrets/key", "'..'"),
        ("file:///srv/driftloop/artifacts/models/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "'..'"),
        ("file:///srv/driftloop/artifacts//etc/passwd", "absolute"),
        ("file://evil.example/srv/driftloop/artifacts/a", "host"),
        ("file:///srv/driftloop/artifacts/a?x=1", "query"),
        ("s3://bucket/srv/driftloop/artifacts/a", "not a file:// URI"),
        ("http://127.0.0.1/srv/driftloop/artifacts/a", "not a file:// URI"),
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "'..'"),
        ("models/ok/../../../etc/passwd", "'..'"),
        ("models/\x00/model.skops", "NUL"),
    ],
)
def test_file_uris_and_keys_that_leave_the_folder_are_refused(uri: str, why: str) -> None:
    with pytest.raises(ArtifactRefused, match=why):
        file_key(uri, ROOT)


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("s3://models/prod/m/1/model.skops", "m/1/model.skops"),
        ("s3://models/prod/m/run 1/#v?.skops", "m/run 1/#v?.skops"),
        ("m/1/model.skops", "m/1/model.skops"),
    ],
)
def test_s3_uris_in_the_bucket_under_the_prefix_give_their_key(uri: str, key: str) -> None:
    assert s3_key(uri, "models", "prod") == key


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("s3://other-bucket/prod/m/1/model.skops", "bucket 'other-bucket'"),
        ("s3://models/staging/m/1/model.skops", "prefix"),
        ("s3://models/production/m/1/model.skops", "prefix"),
        ("s3://models/prod/../staging/m.skops", "'..'"),
        ("s3://models/prod//etc/passwd", "absolute"),
        ("file:///srv/driftloop/artifacts/m.skops", "not an s3:// URI"),
    ],
)
def test_s3_uris_outside_the_bucket_or_prefix_are_refused(uri: str, why: str) -> None:
    with pytest.raises(ArtifactRefused, match=why):
        s3_key(uri, "models", "prod")


def test_a_bucket_without_prefix_takes_every_key_but_no_other_bucket() -> None:
    assert s3_key("s3://models/m/1/model.skops", "models", "") == "m/1/model.skops"
    with pytest.raises(ArtifactRefused):
        s3_key("s3://models-2/m/1/model.skops", "models", "")


def test_a_key_may_name_folders_and_dots_that_do_not_climb() -> None:
    key = "offline/view/date=2026-01-01/part-0001.parquet"
    assert checked_key(key) == key
    assert checked_key("models/m/v1.2/..model") == "models/m/v1.2/..model"


def test_the_checksum_is_the_sha256_of_the_bytes_and_a_mismatch_is_refused() -> None:
    digest = sha256_hex(b"abc")
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    verify_sha256(b"abc", digest, "file:///m")
    verify_sha256(b"abc", digest.upper(), "file:///m")
    with pytest.raises(ArtifactRefused, match="has SHA-256 .* not the .* recorded at registration"):
        verify_sha256(b"abd", digest, "file:///m")


def test_an_artifact_without_a_recorded_checksum_is_refused() -> None:
    with pytest.raises(ArtifactRefused, match="no SHA-256 recorded"):
        verify_sha256(b"abc", None, "file:///m")
