"""The S3-compatible artifact backend (AWS S3, MinIO, Ceph, moto...), through boto3.

boto3 (the ``s3`` extra) rather than hand-made requests: SigV4 signing, path- versus
virtual-host addressing, payload checksums and S3's error codes are easy to get subtly
wrong, and boto3's client is thread-safe, so one client serves every worker thread.

A ``put`` first copies the data into a spooled temporary file while hashing and counting
it, so an oversize artifact is refused before a single byte is uploaded; then one
``PutObject`` with the length, the MIME type and the SHA-256 in the object's metadata.
Locations are ``s3://<bucket>/<key>``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from shiftflow.kernel.artifacts.base import (
    ArtifactRef,
    ArtifactStore,
    copy_capped,
    guess_mime,
    new_key,
    safe_name,
)
from shiftflow.kernel.errors import (
    ArtifactNotFound,
    ArtifactStoreUnavailable,
    PermanentError,
    SettingsError,
    ToolError,
)
from shiftflow.kernel.settings import Settings

#: Bytes kept in memory before a put spools to disk.
_SPOOL_BYTES = 8 * 1024 * 1024
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ArtifactStore(ArtifactStore):
    """Artifacts as objects in one bucket, under an optional key prefix.

    Parameters:
        client: a boto3 S3 client (``from_settings`` builds one with timeouts).
        bucket: the bucket (must exist).
        prefix: a key prefix ("" for none), e.g. ``shiftflow/artifacts``.
        max_bytes: the largest artifact accepted.
    """

    def __init__(self, client: Any, bucket: str, *, prefix: str = "", max_bytes: int = 52_428_800) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ArtifactStore:
        """A store on ``SHIFTFLOW_S3_*`` (endpoint, bucket, prefix, region, credentials, timeout).

        Raises:
            SettingsError: boto3 is not installed (``pip install 'shiftflow[s3]'``).
        """
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise SettingsError(
                "SHIFTFLOW_ARTIFACT_BACKEND=s3 needs boto3: pip install 'shiftflow[s3]'"
            ) from None
        config = Config(
            connect_timeout=settings.s3_timeout_seconds,
            read_timeout=settings.s3_timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
            # A custom endpoint (MinIO, a loopback server) is usually not reachable as
            # <bucket>.<host>; AWS itself prefers virtual hosts.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None,
            config=config,
        )
        return cls(client, settings.s3_bucket, prefix=settings.s3_prefix, max_bytes=settings.artifact_max_bytes)

    def _key(self, location: str) -> str:
        head = f"s3://{self.bucket}/"
        if not location.startswith(head) or len(location) == len(head):
            raise ToolError(f"artifact location {location!r} does not belong to bucket {self.bucket!r}")
        return location[len(head):]

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map botocore's exceptions to ShiftFlow's branches (missing, transient, permanent)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _MISSING:
                raise ArtifactNotFound(f"artifact {what} does not exist") from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
                raise ArtifactStoreUnavailable(f"S3 {what}: {code or status}") from None
            raise PermanentError(f"S3 {what}: {code or status}: {exc}") from None
        except NoCredentialsError:
            raise PermanentError(
                f"S3 {what}: no credentials (set SHIFTFLOW_S3_ACCESS_KEY_ID and SHIFTFLOW_S3_SECRET_ACCESS_KEY)"
            ) from None
        except BotoCoreError as exc:  # connection refused, timeouts, closed connections
            raise ArtifactStoreUnavailable(f"S3 {what}: {exc}") from None

    def put(self, data: bytes | BinaryIO, name: str, mime: str | None = None) -> ArtifactRef:
        """Store ``data`` as a new object (see ``ArtifactStore.put``)."""
        key = new_key(name)
        if self.prefix:
            key = f"{self.prefix}/{key}"
        mime = mime or guess_mime(name)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            size, sha = copy_capped(data, spool, self.max_bytes, name)
            spool.seek(0)
            with self._errors(f"put {key}"):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=spool,
                    ContentLength=size,
                    ContentType=mime,
                    Metadata={"sha256": sha},
                )
        return ArtifactRef(f"s3://{self.bucket}/{key}", safe_name(name), mime, size, sha)

    @contextlib.contextmanager
    def open(self, location: str) -> Iterator[BinaryIO]:
        """Stream the object (see ``ArtifactStore.open``)."""
        key = self._key(location)
        with self._errors(repr(location)):
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        body = answer["Body"]
        try:
            with self._errors(repr(location)):
                yield body
        finally:
            body.close()

    def delete(self, location: str) -> None:
        """Delete the object (S3 answers the same for a missing one)."""
        key = self._key(location)
        with self._errors(f"delete {location!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def exists(self, location: str) -> bool:
        """True when ``HeadObject`` finds the object."""
        key = self._key(location)
        try:
            with self._errors(repr(location)):
                self.client.head_object(Bucket=self.bucket, Key=key)
        except ArtifactNotFound:
            return False
        return True

    def stored(self) -> Iterator[tuple[str, float]]:
        """Every object under the store's prefix with its ``LastModified`` (paged listing)."""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""):
                for item in page.get("Contents", ()):
                    yield f"s3://{self.bucket}/{item['Key']}", item["LastModified"].timestamp()
