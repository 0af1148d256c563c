"""Artifacts: every file a tool reads or makes, kept behind one interface.

``ArtifactStore.put`` stores bytes or a stream under a fresh key and returns an
``ArtifactRef`` (location, name, MIME type, size, SHA-256); ``open``/``get`` read it back,
``delete`` removes it. Two backends: a local directory (the default; ``local.py``) and an
S3-compatible bucket (``s3.py``, needs the ``s3`` extra). ``make_store`` picks one from
the settings. Every backend refuses an artifact larger than its ``max_bytes`` before
keeping anything.
"""

from __future__ import annotations

from shiftflow.kernel.artifacts.base import ArtifactRef, ArtifactStore, location_of
from shiftflow.kernel.artifacts.local import LocalArtifactStore
from shiftflow.kernel.settings import Settings

__all__ = ["ArtifactRef", "ArtifactStore", "LocalArtifactStore", "location_of", "make_store"]


def make_store(settings: Settings) -> ArtifactStore:
    """The artifact store the settings name (``SHIFTFLOW_ARTIFACT_BACKEND``).

    Raises:
        SettingsError: the s3 backend is chosen but boto3 is not installed.
    """
    if settings.artifact_backend == "s3":
        from shiftflow.kernel.artifacts.s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.artifact_dir, max_bytes=settings.artifact_max_bytes)
