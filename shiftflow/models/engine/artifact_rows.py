"""Artifact rows for the files a tool step made.

A tool returns the files it wrote as artifact objects (``{location, name, mime, size,
sha256}``, ``kernel.artifacts.ArtifactRef``). When its step succeeds, each one found in
the result becomes an ``artifact`` row of the execution and the step, written in the
transaction that records the step, so the listing (``GET /executions/{id}/artifacts``,
an agent task's story) shows what a run produced. A row already there for the same step
and location is not written again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shiftflow.models.tables.artifacts import Artifact

#: The most artifact objects one result is searched for (a result is small; this bounds an odd one).
MAX_PER_RESULT = 100


def found(output: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """The artifact objects in a tool's result, in order."""
    if depth > 6:
        return
    if isinstance(output, dict):
        if isinstance(output.get("location"), str) and isinstance(output.get("sha256"), str):
            yield output
            return
        for value in output.values():
            yield from found(value, depth + 1)
    elif isinstance(output, list):
        for value in output:
            yield from found(value, depth + 1)


def kind_of(tool_name: str, mime: str) -> str:
    """The artifact type (``artifact.type``) of a file a tool made."""
    if tool_name == "browser.screenshot":
        return "SCREENSHOT"
    if mime == "application/pdf":
        return "PDF"
    if mime.startswith("image/"):
        return "IMAGE"
    if mime.startswith("video/"):
        return "VIDEO"
    if mime == "application/json":
        return "JSON"
    if mime.startswith("text/"):
        return "TEXT"
    return "FILE"


def record(workspace_id: Any, execution_id: Any, step_execution_id: Any, tool_name: str, output: Any) -> int:
    """Write the artifact rows of one succeeded tool call (call inside the step's transaction).

    Returns:
        How many rows were written.
    """
    written = 0
    for index, ref in enumerate(found(output)):
        if index >= MAX_PER_RESULT:
            break
        location = str(ref["location"])
        if Artifact.select().where((Artifact.step_execution == step_execution_id)
                                   & (Artifact.url == location)).exists():
            continue
        mime = str(ref.get("mime") or "application/octet-stream")
        size = ref.get("size")
        Artifact.create(workspace=workspace_id, execution=execution_id, step_execution=step_execution_id,
                        type=kind_of(tool_name, mime), name=str(ref.get("name") or location.rsplit("/", 1)[-1])[:300],
                        description=f"made by {tool_name}", url=location[:2048],
                        size_bytes=size if isinstance(size, int) and size >= 0 else None, mime_type=mime[:200],
                        sha256=str(ref["sha256"])[:64])
        written += 1
    return written
