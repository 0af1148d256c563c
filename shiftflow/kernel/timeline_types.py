"""The typed timeline: every event type and the JSON Schema its ``data`` must meet.

A timeline is the story of a long execution (and of a pattern workspace) told as typed
events: phase updates, checkpoints, commits, deploys, approvals, retries, status changes.
A reader (a chat-style UI) switches on ``type`` and can rely on ``data``'s shape, because
an event is checked against its type's schema before it is written.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.phases import PHASES

_TEXT = {"type": "string", "maxLength": 2000}
_ID = {"type": "string", "minLength": 1, "maxLength": 200}
_PROGRESS = {"type": "integer", "minimum": 0, "maximum": 100}
_PHASE = {"enum": list(PHASES)}
_STATUS = {"enum": ["PENDING", "RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


_DEPLOY = {"deployment_id": _ID, "project": _TEXT, "ref": _TEXT, "status": _TEXT, "url": {"type": ["string", "null"]},
           "error": {"type": ["string", "null"]}, "step_id": _ID}
_DECISION = {"step_id": _ID, "role": _TEXT, "approved": {"type": "boolean"}, "by": _TEXT, "comment": _TEXT}

#: Event type -> the JSON Schema of its ``data``.
SCHEMAS: dict[str, dict[str, Any]] = {
    "phase_update": _obj(["phase"], phase=_PHASE, progress=_PROGRESS, message=_TEXT, step_id=_ID),
    "progress": _obj(["progress"], progress=_PROGRESS, phase=_PHASE, message=_TEXT, step_id=_ID),
    "checkpoint": _obj(["step_id", "number"], step_id=_ID, number={"type": "integer", "minimum": 1},
                       phase=_PHASE, keys={"type": "array", "items": {"type": "string"}}),
    "completed": _obj([], step_id=_ID, summary=_TEXT),
    "failed": _obj(["error"], step_id=_ID, error={"type": "string", "maxLength": 4000}),
    "commit": _obj(["hash"], hash={"type": "string", "pattern": "^[0-9a-f]{7,64}$"}, message=_TEXT,
                   files_changed={"type": "array", "items": {"type": "string"}}),
    "deploy_started": _obj(["deployment_id"], **_DEPLOY),
    "deploy_building": _obj(["deployment_id"], **_DEPLOY),
    "deploy_success": _obj(["deployment_id", "url"], **_DEPLOY),
    "deploy_failed": _obj(["deployment_id", "status"], **_DEPLOY),
    "deploy_retry": _obj(["reason"], **_DEPLOY, reason=_TEXT, attempt={"type": "integer", "minimum": 1}),
    "approval_requested": _obj(["step_id"], step_id=_ID, role=_TEXT),
    "approval_decided": _obj(["step_id", "approved", "by"], **_DECISION),
    "verification_requested": _obj(["step_id"], step_id=_ID, role=_TEXT),
    "verification_decided": _obj(["step_id", "approved", "by"], **_DECISION),
    "status_changed": _obj(["status"], status=_STATUS, previous=_STATUS, error={"type": ["string", "null"]}),
    "retry_scheduled": _obj(["child_execution_id", "retry_count", "max_retries"], child_execution_id=_ID,
                            retry_count={"type": "integer", "minimum": 1},
                            max_retries={"type": "integer", "minimum": 0},
                            delay_seconds={"type": "number", "minimum": 0}, reason=_TEXT),
    "feedback_sent": _obj(["feedback_ids"], feedback_ids={"type": "array", "items": _ID},
                          count={"type": "integer", "minimum": 0}),
}

#: Every event type.
TYPES: tuple[str, ...] = tuple(SCHEMAS)

#: Who an event speaks for.
AUTHORS = ("user", "system", "agent")

_VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in SCHEMAS.items()}


class TimelineError(PermanentError):
    """Raised when an event's type is unknown or its data does not meet the type's schema."""


def check_event(event_type: str, data: dict[str, Any]) -> None:
    """Check ``data`` against the schema of ``event_type``.

    Raises:
        TimelineError: unknown type, or the data's first problem (its path named).
    """
    validator = _VALIDATORS.get(event_type)
    if validator is None:
        raise TimelineError(f"type: {event_type!r} is not a timeline event type")
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise TimelineError(f"{event_type}.data.{where}: {errors[0].message}")
