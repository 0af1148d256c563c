"""The local-directory artifact backend: one file per artifact under a root directory.

A ``put`` writes to a temporary file inside the root, fsyncs it, and renames it into
place, so a crash never leaves a half-written artifact under a real key. Locations are
``local:<key>``; a location that would leave the root (``..``, absolute paths) is refused.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shiftflow.kernel.artifacts.base import (
    ArtifactRef,
    ArtifactStore,
    copy_capped,
    guess_mime,
    new_key,
    safe_name,
)
from shiftflow.kernel.errors import ArtifactNotFound, ToolError

SCHEME = "local:"


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under ``root`` (created on first use).

    Parameters:
        root: the directory (``SHIFTFLOW_ARTIFACT_DIR``).
        max_bytes: the largest artifact accepted (``SHIFTFLOW_ARTIFACT_MAX_BYTES``).
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 52_428_800) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes

    def _path(self, location: str) -> Path:
        if not location.startswith(SCHEME):
            raise ToolError(f"artifact location {location!r} does not belong to the local store")
        key = location[len(SCHEME):]
        path = (self.root / key).resolve()
        if not key or os.path.isabs(key) or not path.is_relative_to(self.root) or path == self.root:
            raise ToolError(f"artifact location {location!r} is outside the store")
        return path

    def put(self, data: bytes | BinaryIO, name: str, mime: str | None = None) -> ArtifactRef:
        """Store ``data`` under a fresh key (see ``ArtifactStore.put``)."""
        key = new_key(name)
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                size, sha = copy_capped(data, out, self.max_bytes, name)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            with contextlib.suppress(OSError):
                final.parent.rmdir()  # the per-artifact directory, empty again
            raise
        return ArtifactRef(SCHEME + key, safe_name(name), mime or guess_mime(name), size, sha)

    @contextlib.contextmanager
    def open(self, location: str) -> Iterator[BinaryIO]:
        """Read the artifact (see ``ArtifactStore.open``)."""
        path = self._path(location)
        try:
            stream = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactNotFound(f"artifact {location!r} does not exist") from None
        with stream:
            yield stream

    def delete(self, location: str) -> None:
        """Remove the file and its now-empty directory."""
        path = self._path(location)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def exists(self, location: str) -> bool:
        """True when the file is there."""
        return self._path(location).is_file()

    def stored(self) -> Iterator[tuple[str, float]]:
        """Every file under the root with its modification time, ``.partial-`` files of an
        interrupted ``put`` included (they are garbage once old)."""
        if not self.root.is_dir():
            return
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = Path(directory) / name
                try:
                    modified = path.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield SCHEME + path.relative_to(self.root).as_posix(), modified

    @contextlib.contextmanager
    def local_path(self, location: str, suffix: str = "") -> Iterator[Path]:
        """The artifact's own file: no copy (the caller must not modify it)."""
        path = self._path(location)
        if not path.is_file():
            raise ArtifactNotFound(f"artifact {location!r} does not exist")
        yield path
