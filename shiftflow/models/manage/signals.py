"""Outside signals for waiting steps, on a caller's behalf: events and approvals.

The management API and the CLI call these; ``waits`` does the engine's part. Each
signal is checked against the caller's role and workspace, resumes the steps in one
transaction with its audit-log entry, and returns the messages to publish once that
transaction committed. Both are idempotent: a repeated event finds no step waiting any
more, a repeated decision finds the approval decided (409).
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine import runs, waits
from shiftflow.models.manage import approval_roles, audit, queries
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict, InvalidInput

#: Longest event key: it is stored in ``step_execution.wait_key`` with its namespace.
MAX_EVENT_KEY = 200


def send_event(actor: Principal, key: Any, data: Any) -> tuple[dict[str, Any], list[Outgoing]]:
    """Resume every step of the caller's workspace waiting (``wait_event``) for ``key``.

    Returns:
        ``{"key", "resumed"}`` and the messages of the steps that follow.

    Raises:
        Forbidden: the caller may not write executions.
        InvalidInput: ``key`` is not a non-empty string, ``data`` not an object, or either
            holds text PostgreSQL cannot store.
    """
    actor.require("executions:write")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_EVENT_KEY:
        raise InvalidInput("key", f"expected a non-empty string of at most {MAX_EVENT_KEY} characters")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("data", "expected a JSON object")
    for field, value in (("key", key), ("data", data)):
        problem = unstorable(value)
        if problem:
            raise InvalidInput(field, problem)
    if actor.workspace_id is None:
        raise InvalidInput("workspace", "events belong to a workspace: name one")
    with runs.transaction():
        resumed, outgoing = waits.deliver_event(actor.workspace_id, key, data)
        audit.record(actor, "event.delivered", "event", key, after={"key": key, "resumed": resumed},
                         metadata={"data_keys": sorted(data)[:50]})
    return {"key": key, "resumed": resumed}, outgoing


def decide_approval(actor: Principal, execution_id: Any, step_id: Any, *, approved: Any = True,
                    comment: Any = "", by: str | None = None) -> tuple[dict[str, Any], list[Outgoing]]:
    """Approve (or reject, which fails the step) an approval step of the caller's workspace.

    ``by`` names who decided (the CLI's ``--by``); by default the caller's user or key.

    Returns:
        The decision as stored in the step's output, and the messages of what follows.

    Raises:
        NotFound: no such execution in the caller's workspace.
        Conflict: no approval step of that id is waiting in it (decided, timed out, never reached).
        InvalidInput: ``approved`` is not a boolean or ``comment`` not a string.
    """
    actor.require("executions:write")
    if not isinstance(approved, bool):
        raise InvalidInput("approved", "expected true or false")
    if not isinstance(comment, str) or len(comment) > 2_000 or unstorable(comment):
        raise InvalidInput("comment", "expected a string of at most 2000 characters, without \\u0000")
    if not isinstance(step_id, str) or not step_id:
        raise InvalidInput("step_id", "expected a step id")
    with runs.transaction():
        # Locked: of two decisions at once, the second finds the step decided (409).
        execution = runs.lock_execution(queries.get_execution(actor, execution_id).id)
        approval_roles.check(actor, execution, step_id)  # the step's ``role``, when it names one
        who = by or actor.who
        try:
            outgoing = waits.resume_approval(execution.id, step_id, approved=approved, by=who, comment=comment)
        except NotFound:
            # The execution exists (checked above): it is the approval that is not waiting.
            raise Conflict(f"execution {execution.id} has no approval step {step_id!r} waiting") from None
        decision = {"execution_id": str(execution.id), "step_id": step_id, "approved": approved,
                    "by": who, "comment": comment}
        audit.record(actor, "execution.approval_decided", "execution", execution.id,
                         before={"step_id": step_id, "status": "WAITING"},
                         after={"step_id": step_id, "status": "SUCCEEDED" if approved else "FAILED",
                                "approved": approved, "comment": comment},
                         workspace_id=execution.workspace_id)
    return decision, outgoing
