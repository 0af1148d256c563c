"""Artifacts as a workspace sees them: the files an execution's tools made, and their bytes.

The rows (``tables.artifacts.Artifact``) say what and where; the bytes are read through the
kernel's artifact store (``kernel.artifacts``: a local directory or an S3-compatible
bucket), never from a path the caller names. Another workspace's artifact is a 404.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shiftflow.kernel.artifacts import ArtifactStore
from shiftflow.kernel.artifacts.base import CHUNK
from shiftflow.kernel.errors import NotFound, ToolError
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.paging import scoped
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.queries import get_execution
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.base import fk


def artifact_dict(row: Artifact) -> dict[str, Any]:
    """An artifact's description (its location stays inside: clients download by id)."""
    return {
        "id": str(row.id),
        "execution_id": str(fk(row, "execution")),
        "step_execution_id": str(fk(row, "step_execution")) if fk(row, "step_execution") else None,
        "type": row.type,
        "name": row.name,
        "description": row.description,
        "mime_type": row.mime_type,
        "size_bytes": row.size_bytes,
        "sha256": row.sha256,
        "created_at": stamp(row.created_at),
    }


def list_artifacts(actor: Principal, execution_id: Any) -> list[dict[str, Any]]:
    """The artifacts of one execution of the caller's workspace, oldest first.

    Raises:
        NotFound: no such execution in the workspace.
    """
    execution = get_execution(actor, execution_id)
    rows = (Artifact.select().where(Artifact.execution == execution.id)
            .order_by(Artifact.created_at, Artifact.id))
    return [artifact_dict(r) for r in rows]


def get_artifact(actor: Principal, artifact_id: Any) -> Artifact:
    """One artifact of the caller's workspace.

    Raises:
        NotFound: no such artifact in the workspace.
    """
    actor.require("executions:read")
    aid = parse_id(artifact_id, "artifact")
    row = scoped(Artifact.select().where(Artifact.id == aid), Artifact.workspace, actor).first()
    if row is None:
        raise NotFound(f"artifact {aid} does not exist")
    return row


@dataclass
class Content:
    """An artifact's bytes, ready to send: ``chunks`` yields them and closes the store's stream."""

    row: Artifact
    chunks: Iterator[bytes]
    media_type: str


def open_content(actor: Principal, artifact_id: Any, store: ArtifactStore) -> Content:
    """The bytes of one artifact, opened through ``store``; the first chunk is read here, so
    an artifact whose bytes are gone is a ``NotFound`` before anything is sent.

    Raises:
        NotFound: no such artifact in the workspace, or its bytes are no longer stored
            (retention removed them), or they lie outside this deployment's store.
        ArtifactStoreUnavailable: the store did not answer (retry later).
    """
    row = get_artifact(actor, artifact_id)
    stack = contextlib.ExitStack()
    try:
        stream = stack.enter_context(store.open(row.url))
        first = stream.read(CHUNK)
    except ToolError:
        stack.close()
        raise NotFound(f"artifact {row.id}: its content is not in this deployment's artifact store") from None
    except BaseException:
        stack.close()
        raise

    def chunks() -> Iterator[bytes]:
        with stack:
            chunk = first
            while chunk:
                yield chunk
                chunk = stream.read(CHUNK)

    return Content(row, chunks(), row.mime_type or "application/octet-stream")
