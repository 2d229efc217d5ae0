"""Where model artifacts and offline datasets live: a local directory or S3/MinIO.

Services address blobs by key (``models/loans/<run>/model.skops``) and hand
each other full URIs (``file://…`` or ``s3://bucket/prefix/…``), so a consumer
never needs to know which store a producer used.

A URI arrives in Kafka records, which anyone with write access to a topic can
forge, so a store reads and writes only inside itself: the same scheme, the
same bucket, under the configured folder or prefix, with no ``..`` segment
and no absolute key. The check is on the text of the URI, before any file or
object is touched; what fails it raises ``ArtifactRefused``. A model's bytes
are also checked against the SHA-256 the registry recorded (``read_verified``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlsplit

from driftloop.settings import DriftloopSettings


class ArtifactNotFound(KeyError):
    pass


class ArtifactRefused(ValueError):
    """A URI outside the configured store, or an artifact that fails its checksum or format: never read or loaded."""


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def checked_key(key: str) -> str:
    """``key`` when it stays inside a store: relative, no ``..`` segment, no NUL.

    >>> checked_key("models/m/run-1/model.skops")
    'models/m/run-1/model.skops'
    >>> checked_key("models/../../etc/passwd")
    Traceback (most recent call last):
    ...
    driftloop.artifacts.ArtifactRefused: key 'models/../../etc/passwd' climbs out of the store with '..'
    """
    if key.startswith("/"):
        raise ArtifactRefused(f"key {key!r} is absolute; keys are relative to the store")
    if "\x00" in key:
        raise ArtifactRefused(f"key {key!r} holds a NUL byte")
    if ".." in key.split("/"):
        raise ArtifactRefused(f"key {key!r} climbs out of the store with '..'")
    return key


def file_key(uri_or_key: str, root: PurePosixPath) -> str:
    """The key of a ``file://`` URI inside the folder ``root`` (absolute), or of a plain key.

    >>> root = PurePosixPath("/srv/driftloop/artifacts")
    >>> file_key("file:///srv/driftloop/artifacts/models/m/1/model.skops", root)
    'models/m/1/model.skops'
    >>> file_key("file:///srv/driftloop/artifacts-other/a", root)
    Traceback (most recent call last):
    ...
    driftloop.artifacts.ArtifactRefused: 'file:///srv/driftloop/artifacts-other/a' is outside the store file:///srv/driftloop/artifacts
    """
    if not _SCHEME.match(uri_or_key):
        return checked_key(uri_or_key)
    parts = urlsplit(uri_or_key)
    if parts.scheme != "file":
        raise ArtifactRefused(f"{uri_or_key!r} is not a file:// URI, and the store is the folder {root}")
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ArtifactRefused(f"{uri_or_key!r} names a host, a query or a fragment; the store is the folder {root}")
    path = unquote(parts.path)
    inside = f"{root.as_posix().rstrip('/')}/"
    if not path.startswith(inside):
        raise ArtifactRefused(f"{uri_or_key!r} is outside the store file://{root.as_posix()}")
    return checked_key(path.removeprefix(inside))


def s3_key(uri_or_key: str, bucket: str, prefix: str) -> str:
    """The key (below ``prefix``) of an ``s3://`` URI in ``bucket``, or of a plain key.

    Split by hand, not as a URL: object names may hold ``#`` or ``?``.

    >>> s3_key("s3://models/prod/m/1/model.skops", "models", "prod")
    'm/1/model.skops'
    >>> s3_key("s3://elsewhere/prod/m/1/model.skops", "models", "prod")
    Traceback (most recent call last):
    ...
    driftloop.artifacts.ArtifactRefused: 's3://elsewhere/prod/m/1/model.skops' is in bucket 'elsewhere', not ...
    """
    if not _SCHEME.match(uri_or_key):
        return checked_key(uri_or_key)
    if not uri_or_key.startswith("s3://"):
        raise ArtifactRefused(f"{uri_or_key!r} is not an s3:// URI, and the store is s3://{bucket}/{prefix}")
    named_bucket, _, name = uri_or_key.removeprefix("s3://").partition("/")
    if named_bucket != bucket:
        raise ArtifactRefused(f"{uri_or_key!r} is in bucket {named_bucket!r}, not the store's {bucket!r}")
    if prefix:
        if not name.startswith(f"{prefix}/"):
            raise ArtifactRefused(f"{uri_or_key!r} is outside the store's prefix s3://{bucket}/{prefix}/")
        name = name.removeprefix(f"{prefix}/")
    return checked_key(name)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str | None, uri: str) -> None:
    """Refuse ``data`` unless it hashes to ``expected``; an artifact with no recorded checksum is refused too.

    >>> verify_sha256(b"model", sha256_hex(b"model"), "file:///a")
    >>> verify_sha256(b"tampered", sha256_hex(b"model"), "file:///a")
    Traceback (most recent call last):
    ...
    driftloop.artifacts.ArtifactRefused: file:///a has SHA-256 ..., not the ... recorded at registration: refusing ...
    """
    if expected is None:
        raise ArtifactRefused(f"{uri} has no SHA-256 recorded at registration: refusing to load it (retrain the model)")
    actual = sha256_hex(data)
    if actual != expected.lower():
        raise ArtifactRefused(
            f"{uri} has SHA-256 {actual}, not the {expected} recorded at registration: refusing to load it"
        )


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` atomically and return its URI."""

    def get(self, uri_or_key: str) -> bytes:
        """Read a blob by URI or key; raise ``ArtifactNotFound`` when absent, ``ArtifactRefused`` when outside."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    def uri(self, key: str) -> str: ...


def read_verified(store: ArtifactStore, uri: str, sha256: str | None) -> bytes:
    """The blob at ``uri`` if it is inside ``store`` and hashes to ``sha256``; else ``ArtifactRefused``."""
    data = store.get(uri)
    verify_sha256(data, sha256, uri)
    return data


class LocalArtifactStore:
    """A directory; writes go to a temp file and are renamed so readers never see half a blob."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def _path(self, uri_or_key: str) -> Path:
        return self.root / file_key(uri_or_key, PurePosixPath(self.root))

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return path.as_uri()

    def get(self, uri_or_key: str) -> bytes:
        try:
            return self._path(uri_or_key).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(uri_or_key) from exc

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / checked_key(prefix)
        if not base.exists():
            return iter(())
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return iter(sorted(k for k in keys if not Path(k).name.startswith(".")))


class S3ArtifactStore:
    """S3 or MinIO through the ``minio`` client; objects are written whole, so they are atomic."""

    def __init__(self, bucket: str, prefix: str, endpoint: str, access_key: str, secret_key: str, secure: bool) -> None:
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def _key(self, uri_or_key: str) -> str:
        """The object name of a key or URI inside this store."""
        key = s3_key(uri_or_key, self.bucket, self.prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), length=len(data))
        return self.uri(key)

    def get(self, uri_or_key: str) -> bytes:
        from minio.error import S3Error

        name = self._key(uri_or_key)
        try:
            response = self.client.get_object(self.bucket, name)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}:
                raise ArtifactNotFound(uri_or_key) from exc
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str) -> Iterator[str]:
        # Listing is by folder, as on a file system: "a/" never matches "ab/…".
        full = self._key(prefix.rstrip("/") + "/") if prefix.strip("/") else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        names = (o.object_name for o in self.client.list_objects(self.bucket, prefix=full, recursive=True))
        return iter(sorted(name[strip:] for name in names if name))


def open_store(settings: DriftloopSettings) -> ArtifactStore:
    """The store ``DRIFTLOOP_ARTIFACT_URI`` names (``file://dir`` or ``s3://bucket/prefix``)."""
    uri = settings.artifacts
    if uri.startswith("s3://"):
        parsed = urlsplit(uri)
        if not settings.s3_endpoint:
            raise ValueError("DRIFTLOOP_ARTIFACT_URI is s3://… but DRIFTLOOP_S3_ENDPOINT is empty")
        return S3ArtifactStore(
            bucket=parsed.netloc,
            prefix=parsed.path,
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
        )
    if uri.startswith("file://"):
        return LocalArtifactStore(Path(uri.removeprefix("file://")))
    raise ValueError(f"DRIFTLOOP_ARTIFACT_URI must start with file:// or s3://, got {uri!r}")
