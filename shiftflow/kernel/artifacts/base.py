"""The artifact interface and the pieces every backend shares (keys, hashing, the size cap)."""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import re
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from shiftflow.kernel.errors import ArtifactTooLarge, ToolError

#: Bytes read from a stream at a time while hashing and counting.
CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact is and what it holds.

    Parameters:
        location: the backend's address (``local:<key>`` or ``s3://<bucket>/<key>``).
        name: the file name given at ``put`` (made safe for a path).
        mime: its MIME type.
        size: bytes.
        sha256: hex digest of the content.
    """

    location: str
    name: str
    mime: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what tools return and take)."""
        return asdict(self)


def location_of(value: str | Mapping[str, Any]) -> str:
    """The location in a tool parameter that names an artifact: a string or ``{location: ...}``.

    Raises:
        ToolError: neither.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("location"), str):
        return str(value["location"])
    raise ToolError(f"artifact {value!r}: expected a location string or an object with 'location'")


def safe_name(name: str) -> str:
    """``name`` reduced to characters that are safe in a path and an S3 key (never empty)."""
    base = _UNSAFE.sub("_", name.rsplit("/", 1)[-1]).strip("._") or "artifact"
    return base[:120]


def new_key(name: str) -> str:
    """A fresh key: ``YYYY/MM/DD/<uuid>/<safe name>`` (dated, for retention by prefix)."""
    return f"{time.strftime('%Y/%m/%d', time.gmtime())}/{uuid.uuid4().hex}/{safe_name(name)}"


def guess_mime(name: str) -> str:
    """The MIME type a file name suggests, ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def copy_capped(data: bytes | BinaryIO, out: IO[bytes], max_bytes: int, name: str) -> tuple[int, str]:
    """Write ``data`` to ``out``, hashing and counting, refusing more than ``max_bytes``.

    Returns:
        (size, sha256 hex).

    Raises:
        ArtifactTooLarge: more than ``max_bytes``; ``out`` holds a partial copy the caller drops.
    """
    digest = hashlib.sha256()
    size = 0
    chunks: Iterator[bytes]
    if isinstance(data, (bytes, bytearray, memoryview)):
        chunks = iter((bytes(data),))
    else:
        chunks = iter(lambda: data.read(CHUNK), b"")
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise ArtifactTooLarge(
                f"artifact {name!r} is larger than the limit of {max_bytes} bytes (SHIFTFLOW_ARTIFACT_MAX_BYTES)"
            )
        digest.update(chunk)
        out.write(chunk)
    return size, digest.hexdigest()


class ArtifactStore(ABC):
    """One place for artifacts. Subclasses implement the five storage methods."""

    #: The largest artifact ``put`` accepts, bytes.
    max_bytes: int

    @abstractmethod
    def put(self, data: bytes | BinaryIO, name: str, mime: str | None = None) -> ArtifactRef:
        """Store ``data`` (bytes or a binary stream) as a new artifact.

        Parameters:
            data: the content.
            name: a file name (kept, made safe, as the key's last part).
            mime: its MIME type; guessed from ``name`` when None.

        Raises:
            ArtifactTooLarge: over ``max_bytes``; nothing is kept.
            ArtifactStoreUnavailable: the backend did not answer (retry later).
        """

    @abstractmethod
    def open(self, location: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A context manager yielding a binary stream of the artifact's content.

        Raises:
            ArtifactNotFound: nothing at ``location``.
            ToolError: ``location`` does not belong to this store.
        """

    @abstractmethod
    def delete(self, location: str) -> None:
        """Remove the artifact; removing one that is already gone is not an error."""

    @abstractmethod
    def exists(self, location: str) -> bool:
        """True when something is stored at ``location``."""

    def stored(self) -> Iterator[tuple[str, float]]:
        """Every (location, last modified as Unix seconds) in the store, for retention's
        orphan sweep. Backends that cannot list raise ``ToolError``."""
        raise ToolError(f"{type(self).__name__} cannot list its artifacts")

    def get(self, location: str) -> bytes:
        """The artifact's whole content (use ``open`` for large ones)."""
        with self.open(location) as stream:
            return stream.read()

    @contextlib.contextmanager
    def local_path(self, location: str, suffix: str = "") -> Iterator[Path]:
        """A file on this machine holding the artifact, for programs that need a path (ffmpeg).

        The default copies into a temporary file removed on exit; the local backend yields
        its own file. The caller must not modify the file.
        """
        with self.open(location) as stream, tempfile.NamedTemporaryFile(suffix=suffix) as copy:
            copy_capped(stream, copy, self.max_bytes, location)
            copy.flush()
            yield Path(copy.name)
