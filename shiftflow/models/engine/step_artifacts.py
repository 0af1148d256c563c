"""The files of one tool call: which artifacts it may read, which it made, and their rows.

A tool reads and writes files through ``ToolContext.artifacts``. For a step, the engine
gives it a ``StepArtifacts`` over the deployment's store instead:

* **Reads are scoped.** Before the call, ``allowed_inputs`` walks the parameters beside the
  tool's schema and checks every artifact reference (a field declared ``ARTIFACT_INPUT``:
  ``media.image``'s ``input``, ``email.send``'s ``attachments[0].artifact``) against the
  ``artifact`` table: it must be a row of the execution's own workspace. Anything else is a
  ``ToolError`` naming the field (``steps[2].with.attachments[0].artifact: ...``), before any
  outside effect. The wrapper then refuses to open any location that was not checked or
  made by this call, so a tool cannot read another workspace's file by its location.
* **Writes are recorded.** Every ``put`` of the call is kept in ``made``. When the call
  succeeds, ``record`` inserts one ``artifact`` row per file *inside the transaction that
  completes the step* (``ToolCall.finished``): a crash leaves either both or neither. When
  the call fails (an artifact over ``SHIFTFLOW_ARTIFACT_MAX_BYTES`` included), ``discard``
  deletes what it had already stored, so nothing is half-written. A file stored by a
  worker that died before its step completed has no row: retention removes such orphans
  (``models.manage.retention``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from shiftflow.kernel.artifacts import ArtifactRef, ArtifactStore, location_of
from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.tools.base import ARTIFACT_INPUT, Tool
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.base import utcnow

log = logging.getLogger(__name__)

#: ``artifact.type`` by tool, for tools whose files have a kind of their own.
_TYPE_BY_TOOL = {"browser.screenshot": "SCREENSHOT", "browser.pdf": "PDF"}


def artifact_type(tool: str, mime: str) -> str:
    """The ``artifact.type`` of a file ``tool`` made with MIME type ``mime``."""
    if tool in _TYPE_BY_TOOL:
        return _TYPE_BY_TOOL[tool]
    major = mime.split("/", 1)[0]
    if mime == "application/pdf":
        return "PDF"
    if mime == "application/json":
        return "JSON"
    if major == "image":
        return "IMAGE"
    if major == "video":
        return "VIDEO"
    if major == "text":
        return "TEXT"
    return "FILE"


def _references(schema: Any, value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(field path, value) of every artifact reference in ``value``, by walking ``schema``."""
    if not isinstance(schema, Mapping):
        return
    if schema == ARTIFACT_INPUT:
        yield path, value
        return
    if isinstance(value, Mapping):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                yield from _references(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from _references(schema["items"], item, f"{path}[{index}]")
    for keyword in ("oneOf", "anyOf"):
        for option in schema.get(keyword) or ():
            yield from _references(option, value, path)


def allowed_inputs(tool: Tool, params: Any, workspace_id: Any, where: str) -> set[str]:
    """The locations of the artifacts ``params`` names, each checked to be the workspace's.

    Parameters:
        where: the prefix of field paths in errors (``steps[3].with``).

    Raises:
        ToolError: a reference that is no artifact of this workspace (names the field).
    """
    found: dict[str, str] = {}
    for path, value in _references(tool.params_schema, params, where):
        try:
            found[location_of(value)] = path
        except ToolError:
            raise ToolError(f"{path}: expected an artifact location or an artifact object") from None
    if not found:
        return set()
    known = {row.url for row in Artifact.select(Artifact.url).where(
        (Artifact.url.in_(list(found))) & (Artifact.workspace == workspace_id))}
    for location, path in found.items():
        if location not in known:
            raise ToolError(f"{path}: {location!r} is not an artifact of this workspace")
    return set(found)


class StepArtifacts(ArtifactStore):
    """The store as one tool call sees it (see the module docstring).

    Parameters:
        inner: the deployment's store.
        allowed: locations this call may read (checked by ``allowed_inputs``).
    """

    def __init__(self, inner: ArtifactStore, allowed: set[str]) -> None:
        self.inner = inner
        self.max_bytes = inner.max_bytes
        self._allowed = set(allowed)
        self._lock = threading.Lock()
        #: Files this call stored, in order.
        self.made: list[ArtifactRef] = []

    def _check(self, location: str) -> None:
        with self._lock:
            if location not in self._allowed:
                raise ToolError(f"artifact {location!r} is not an input of this step")

    def put(self, data: bytes | BinaryIO, name: str, mime: str | None = None) -> ArtifactRef:
        """Store through the inner store and remember the file (see ``ArtifactStore.put``)."""
        ref = self.inner.put(data, name, mime)
        with self._lock:
            self.made.append(ref)
            self._allowed.add(ref.location)
        return ref

    def open(self, location: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Read an allowed artifact."""
        self._check(location)
        return self.inner.open(location)

    def delete(self, location: str) -> None:
        """Delete a file this call made (tools never delete their inputs)."""
        with self._lock:
            if location not in {ref.location for ref in self.made}:
                raise ToolError(f"artifact {location!r} was not made by this step")
            self.made = [ref for ref in self.made if ref.location != location]
        self.inner.delete(location)

    def exists(self, location: str) -> bool:
        """True when an allowed artifact is stored."""
        self._check(location)
        return self.inner.exists(location)

    @contextlib.contextmanager
    def local_path(self, location: str, suffix: str = "") -> Iterator[Path]:
        """The inner store's file of an allowed artifact."""
        self._check(location)
        with self.inner.local_path(location, suffix) as path:
            yield path

    def discard(self) -> None:
        """Delete every file this call stored (it failed: none of them gets a row)."""
        with self._lock:
            made, self.made = self.made, []
        for ref in made:
            try:
                self.inner.delete(ref.location)
            except Exception as exc:  # noqa: BLE001 - retention removes the orphan later
                log.warning("artifact %s of a failed call not deleted (%s); retention removes it", ref.location, exc)


def record(made: list[ArtifactRef], *, tool: str, workspace_id: Any, execution_id: Any,
           step_execution_id: Any) -> list[Any]:
    """Insert one ``artifact`` row per file (call inside the step's transaction); their ids."""
    now = utcnow()
    ids = []
    for ref in made:
        row = Artifact.create(workspace=workspace_id, execution=execution_id, step_execution=step_execution_id,
                              type=artifact_type(tool, ref.mime), name=ref.name[:300], description=tool,
                              url=ref.location, size_bytes=ref.size, mime_type=ref.mime[:200], sha256=ref.sha256,
                              created_at=now)
        ids.append(row.id)
    return ids
