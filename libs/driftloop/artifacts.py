"""Where model artifacts and offline datasets live: a local directory or S3/MinIO.

Services address blobs by key (``models/loans/<run>/model.joblib``) and hand
each other full URIs (``file://…`` or ``s3://bucket/prefix/…``), so a consumer
never needs to know which store a producer used.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from driftloop.settings import DriftloopSettings


class ArtifactNotFound(KeyError):
    pass


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` atomically and return its URI."""

    def get(self, uri_or_key: str) -> bytes:
        """Read a blob by URI or key; raise ``ArtifactNotFound`` when absent."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    def uri(self, key: str) -> str: ...


class LocalArtifactStore:
    """A directory; writes go to a temp file and are renamed so readers never see half a blob."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def _path(self, uri_or_key: str) -> Path:
        if uri_or_key.startswith("file://"):
            return Path(unquote(urlparse(uri_or_key).path))
        return self.root / uri_or_key

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
        base = self.root / prefix
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

    def _locate(self, uri_or_key: str) -> tuple[str, str]:
        """Bucket and object name of a URI (split by hand: keys may hold '#' or '?') or of a key in this store."""
        if uri_or_key.startswith("s3://"):
            bucket, _, name = uri_or_key.removeprefix("s3://").partition("/")
            return bucket, name
        return self.bucket, self._key(uri_or_key)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), length=len(data))
        return self.uri(key)

    def get(self, uri_or_key: str) -> bytes:
        from minio.error import S3Error

        bucket, name = self._locate(uri_or_key)
        try:
            response = self.client.get_object(bucket, name)
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
        full = self._key(prefix.rstrip("/") + "/") if prefix.strip("/") else self._key("")
        strip = len(self.prefix) + 1 if self.prefix else 0
        names = (o.object_name for o in self.client.list_objects(self.bucket, prefix=full, recursive=True))
        return iter(sorted(name[strip:] for name in names if name))


def open_store(settings: DriftloopSettings) -> ArtifactStore:
    """The store ``DRIFTLOOP_ARTIFACT_URI`` names (``file://dir`` or ``s3://bucket/prefix``)."""
    uri = settings.artifacts
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
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
