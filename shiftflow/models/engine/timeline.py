"""Writing and reading the typed timeline (MongoDB ``timeline_events``), with live copies.

``emit`` checks an event against its type's schema (``kernel.timeline_types``) at once, so
a wrong event fails where it is made, and writes it only after the transaction around it
committed (``mongo_log.after_commit``): the timeline tells only what happened. Each event is
also published on its execution's Redis channel (``{"updates": [{"timeline": event}]}``),
which the API's Server-Sent Events stream forwards.

An event names its execution and, when the execution is an agent run of a pattern
workspace (``PatternRun``), that pattern too, so a workspace's timeline spans all its runs
and their retries.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from shiftflow.kernel.mongo import TIMELINE_EVENTS, get_sink
from shiftflow.kernel.redis_handle import publish_updates
from shiftflow.kernel.timeline_types import AUTHORS, check_event
from shiftflow.models.engine import mongo_log, runs
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.patterns import PatternRun

#: The most events one read returns.
MAX_READ = 1000

_patterns: OrderedDict[str, str | None] = OrderedDict()
_patterns_lock = threading.Lock()
_last_seq = 0


def _next_seq() -> int:
    """A per-process increasing sequence (nanoseconds since the epoch, never repeated)."""
    global _last_seq
    with _patterns_lock:
        _last_seq = max(_last_seq + 1, time.time_ns())
        return _last_seq


def pattern_of(execution_id: Any) -> str | None:
    """The pattern workspace an execution is an agent run of (None for any other execution)."""
    key = str(execution_id)
    with _patterns_lock:
        if key in _patterns:
            return _patterns[key]
    run = PatternRun.get_or_none(PatternRun.execution == execution_id)
    found = str(run.pattern_id) if run is not None else None
    with _patterns_lock:
        _patterns[key] = found
        while len(_patterns) > 10_000:
            _patterns.popitem(last=False)
    return found


def forget_pattern(execution_id: Any) -> None:
    """Drop the cached pattern of an execution (its ``PatternRun`` was just made)."""
    with _patterns_lock:
        _patterns.pop(str(execution_id), None)


def emit(execution: Execution, event_type: str, data: dict[str, Any], *, author_type: str = "system",
         title: str | None = None, pattern_id: str | None = None) -> dict[str, Any]:
    """Record one timeline event of ``execution`` (after the enclosing transaction commits).

    Returns:
        The event as readers will see it.

    Raises:
        TimelineError: unknown type, or ``data`` does not meet its schema.
        ValueError: ``author_type`` is not user, system or agent.
    """
    check_event(event_type, data)
    if author_type not in AUTHORS:
        raise ValueError(f"author_type: {author_type!r} is not one of {', '.join(AUTHORS)}")
    event = {
        "id": uuid.uuid4().hex,
        "seq": _next_seq(),
        "type": event_type,
        "executionId": str(execution.id),
        "workspaceId": str(execution.workspace_id),
        "workflowId": str(execution.workflow_id),
        "patternId": pattern_id or pattern_of(execution.id),
        "authorType": author_type,
        "title": title,
        "data": data,
        "at": utcnow(),
    }
    mongo_log.after_commit(_write, event)
    return public(event)


def emit_for_pattern(workspace_id: Any, pattern_id: Any, event_type: str, data: dict[str, Any], *,
                     author_type: str = "user", title: str | None = None,
                     execution_id: Any = None) -> dict[str, Any]:
    """Record a pattern workspace's event that may belong to no execution (feedback sent...)."""
    check_event(event_type, data)
    event = {
        "id": uuid.uuid4().hex, "seq": _next_seq(), "type": event_type,
        "executionId": str(execution_id) if execution_id else None, "workspaceId": str(workspace_id),
        "workflowId": None, "patternId": str(pattern_id), "authorType": author_type, "title": title,
        "data": data, "at": utcnow(),
    }
    mongo_log.after_commit(_write, event)
    return public(event)


def approval_requested(execution: Execution, step_id: str, inputs: Any) -> None:
    """``approval_requested`` (or ``verification_requested`` for ``with: {kind: verification}``)."""
    inputs = inputs if isinstance(inputs, dict) else {}
    kind = "verification" if inputs.get("kind") == "verification" else "approval"
    data: dict[str, Any] = {"step_id": step_id}
    if isinstance(inputs.get("role"), str):
        data["role"] = inputs["role"][:50]
    emit(execution, f"{kind}_requested", data)


def approval_decided(execution: Execution, step_id: str, *, approved: bool, by: str, comment: str) -> None:
    """``approval_decided`` (or ``verification_decided``) for a decision on an approval step."""
    definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
    inputs = definition.step(step_id).inputs
    kind = "verification" if inputs.get("kind") == "verification" else "approval"
    data: dict[str, Any] = {"step_id": step_id, "approved": approved, "by": by[:2000], "comment": comment[:2000]}
    if isinstance(inputs.get("role"), str):
        data["role"] = inputs["role"][:50]
    emit(execution, f"{kind}_decided", data, author_type="user")


def _write(event: dict[str, Any]) -> None:
    sink = get_sink()
    if sink is not None:
        sink.write(TIMELINE_EVENTS, dict(event))
    if event["executionId"]:
        publish_updates([(event["executionId"], {"timeline": public(event)})])


def public(document: dict[str, Any]) -> dict[str, Any]:
    """An event as the API shows it (JSON: the time as ISO 8601, no MongoDB id)."""
    at = document.get("at")
    return {
        "id": document["id"], "seq": int(document["seq"]), "type": document["type"],
        "execution_id": document.get("executionId"), "pattern_id": document.get("patternId"),
        "author_type": document.get("authorType", "system"), "title": document.get("title"),
        "data": document.get("data") or {},
        "at": at.isoformat() + "Z" if isinstance(at, dt.datetime) else at,
    }


def read(db: Any, *, workspace_id: Any, execution_ids: list[str] | None = None, pattern_id: str | None = None,
         after_seq: int = 0, limit: int = MAX_READ) -> list[dict[str, Any]]:
    """The events of some executions, or of a pattern workspace, oldest first (tenant-filtered)."""
    query: dict[str, Any] = {"workspaceId": str(workspace_id), "seq": {"$gt": int(after_seq)}}
    if execution_ids is not None:
        query["executionId"] = {"$in": list(execution_ids)}
    if pattern_id is not None:
        query["patternId"] = str(pattern_id)
    cursor = db[TIMELINE_EVENTS].find(query).sort([("seq", 1)]).limit(max(1, min(limit, MAX_READ)))
    return [public(doc) for doc in cursor]
