"""Pattern workspaces on a caller's behalf: create, read, send feedback, approve, timelines.

``send_feedback`` stores a batch of feedback items and starts one execution of the shipped
pattern-feedback workflow (``flow``) for them, in one transaction with its ``PatternRun``
and the ``feedback_sent`` timeline event; the messages of its first steps are returned to
publish after the commit. ``decide`` approves or rejects the approval step waiting in a
run (the user approval, then the admin verification; the step's ``role`` decides who may).
Every function checks the caller's permission and workspace; bad input is refused naming
the field, before anything is written.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any

import peewee

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine import retries, runs, timeline
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import audit, queries, signals
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.plain import stamp
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.patterns import flow
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.patterns import FeedbackItem, PatternRun, PatternWorkspace

MAX_BATCH = 100
#: Longest ``Idempotency-Key`` (as on the API's other idempotent POSTs).
MAX_IDEMPOTENCY_KEY = 200
MAX_CONTENT = 10_000
_PATTERN_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
#: Approval steps of the shipped workflow, in the order they wait.
APPROVAL_STEPS = ("user_approval", "admin_verification")


def pattern_dict(row: PatternWorkspace) -> dict[str, Any]:
    """A pattern workspace as plain data."""
    return {"id": str(row.id), "pattern_type": row.pattern_type, "name": row.name, "category": row.category,
            "status": row.status, "version": row.version, "feedback_count": row.feedback_count,
            "created_at": stamp(row.created_at), "approved_at": stamp(row.approved_at),
            "verified_at": stamp(row.verified_at)}


def _text(value: Any, field: str, limit: int, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(field, f"expected a non-empty string of at most {limit} characters")
    problem = unstorable(value)
    if problem:
        raise InvalidInput(field, problem)
    return value


def create(actor: Principal, pattern_type: Any, name: Any, category: Any = "pattern",
           description: Any = None) -> dict[str, Any]:
    """Create a pattern workspace in the caller's workspace.

    Raises:
        InvalidInput: a bad field (named); Conflict: the workspace already has this pattern type.
    """
    actor.require("workflows:write")
    if not isinstance(pattern_type, str) or not _PATTERN_TYPE.match(pattern_type):
        raise InvalidInput("pattern_type", "expected 1-50 lower-case letters, digits, '_' or '-'")
    _text(name, "name", 200)
    _text(category, "category", 50)
    _text(description, "description", MAX_CONTENT, required=False)
    if actor.workspace_id is None:
        raise InvalidInput("workspace", "a pattern workspace belongs to a workspace: name one")
    try:
        with runs.transaction():
            row = PatternWorkspace.create(workspace=actor.workspace_id, pattern_type=pattern_type, name=name,
                                          category=category, description=description, created_by=actor.user_id)
            audit.record(actor, "pattern.created", "pattern_workspace", row.id,
                         after={"pattern_type": pattern_type, "name": name, "category": category})
    except peewee.IntegrityError:
        raise Conflict(f"this workspace already has a {pattern_type!r} pattern workspace") from None
    return pattern_dict(row)


def get(actor: Principal, pattern_id: Any) -> PatternWorkspace:
    """One pattern workspace of the caller's workspace.

    Raises:
        NotFound: no such pattern workspace there (or not an id).
    """
    actor.require("workflows:read")
    try:
        key = uuid.UUID(str(pattern_id))
    except ValueError:
        raise NotFound(f"pattern workspace {str(pattern_id)[:60]} does not exist") from None
    query = PatternWorkspace.select().where(PatternWorkspace.id == key)
    if actor.workspace_id is not None:
        query = query.where(PatternWorkspace.workspace == actor.workspace_id)
    row = query.first()
    if row is None:
        raise NotFound(f"pattern workspace {key} does not exist")
    return row


def _items(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise InvalidInput("items", f"expected a list of 1 to {MAX_BATCH} feedback items")
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"items[{index}]", "expected an object with content")
        content = _text(item.get("content"), f"items[{index}].content", MAX_CONTENT)
        data = item.get("data", {})
        if not isinstance(data, dict):
            raise InvalidInput(f"items[{index}].data", "expected an object")
        problem = unstorable(data)
        if problem:
            raise InvalidInput(f"items[{index}].data", problem)
        checked.append({"content": content, "data": data})
    return checked


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable() and key.isascii()):
        raise InvalidInput("Idempotency-Key", f"expected 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")


def _keyed_dedup(pattern_id: Any, key: str) -> str:
    """The dedup key of the run a keyed batch starts (the key hashed: any length fits the column)."""
    return f"feedback:{pattern_id}:key:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def _lock_key(dedup_key: str) -> None:
    """Serialise two requests with the same key until the transaction ends (PostgreSQL), so
    that a retry racing its original waits for it and then finds its run."""
    if is_postgres():
        database.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"shiftflow.{dedup_key}",))


def _replay(earlier: Execution, checked: list[dict[str, Any]], key: str) -> tuple[dict[str, Any], list[Outgoing]]:
    """The answer to a batch already sent under ``key``: the same run, if it is the same batch."""
    run = PatternRun.get(PatternRun.execution == earlier.id)
    ids = [str(i) for i in run.feedback_ids]
    stored = {str(r.id): r for r in FeedbackItem.select().where(FeedbackItem.id.in_(ids))}
    sent = [{"content": stored[i].content, "data": stored[i].data} for i in ids if i in stored]
    if sent != checked:
        raise Conflict(f"Idempotency-Key {key!r} was already used for another batch of feedback to this pattern "
                       f"workspace (run {earlier.id}); send a new batch with a new key")
    definition = runs.load_definition(earlier.workflow_id, earlier.workflow_version)
    again = runs.pending_messages(earlier, definition) if earlier.status == "RUNNING" else []
    return {"execution_id": str(earlier.id), "pattern_id": str(run.pattern_id), "feedback_ids": ids}, again


def send_feedback(actor: Principal, pattern_id: Any, items: Any, *,
                  idempotency_key: str | None = None) -> tuple[dict[str, Any], list[Outgoing]]:
    """Store a batch of feedback and start the agent run that processes it.

    Parameters:
        idempotency_key: a client's retry with the same key (for the same pattern workspace)
            and the same items gets the same answer and run: no second batch, no second run.

    Returns:
        ``{"execution_id", "pattern_id", "feedback_ids"}`` and the messages to publish.

    Raises:
        NotFound: unknown pattern workspace; InvalidInput: a bad item or key (named); Forbidden;
        Conflict: the key was used for another batch.
    """
    actor.require("executions:write")
    _check_idempotency_key(idempotency_key)
    pattern = get(actor, pattern_id)
    checked = _items(items)
    workflow = flow.install(pattern.workspace_id)
    with runs.transaction():
        keyed = None if idempotency_key is None else _keyed_dedup(pattern.id, idempotency_key)
        if keyed is not None and idempotency_key is not None:
            _lock_key(keyed)
            earlier = Execution.get_or_none((Execution.workflow == workflow.id) & (Execution.dedup_key == keyed))
            if earlier is not None:
                return _replay(earlier, checked, idempotency_key)
        rows = [FeedbackItem.create(workspace=pattern.workspace_id, pattern=pattern.id, user=actor.user_id,
                                    content=item["content"], data=item["data"]) for item in checked]
        ids = [str(r.id) for r in rows]
        batch = hashlib.sha256(",".join(ids).encode()).hexdigest()[:24]
        started = start_execution(TriggerPayload(
            workflow_id=str(workflow.id), dedup_key=keyed or f"feedback:{pattern.id}:{batch}", source="api",
            data={"pattern_id": str(pattern.id), "pattern_type": pattern.pattern_type, "feedback_ids": ids,
                  "feedback": [{"id": i, **item} for i, item in zip(ids, checked, strict=True)]},
            triggered_by=str(actor.user_id) if actor.user_id else ""))
        if started.execution is None:
            raise Conflict(f"the {flow.NAME} workflow refused a new execution: {started.reason}")
        execution = started.execution
        PatternRun.create(workspace=pattern.workspace_id, pattern=pattern.id, execution=execution.id,
                          feedback_ids=ids)
        timeline.forget_pattern(execution.id)
        FeedbackItem.update(sent_at=utcnow(), execution=execution.id).where(FeedbackItem.id.in_(ids)).execute()
        PatternWorkspace.update(status="implementing", feedback_count=PatternWorkspace.feedback_count + len(ids)).where(
            PatternWorkspace.id == pattern.id).execute()
        audit.record(actor, "pattern.feedback_sent", "pattern_workspace", pattern.id,
                     after={"execution_id": str(execution.id), "feedback_ids": ids},
                     workspace_id=pattern.workspace_id)
        timeline.emit_for_pattern(pattern.workspace_id, pattern.id, "feedback_sent",
                                  {"feedback_ids": ids, "count": len(ids)}, execution_id=execution.id,
                                  title=f"{len(ids)} feedback item(s) sent")
    return {"execution_id": str(execution.id), "pattern_id": str(pattern.id), "feedback_ids": ids}, started.outgoing


def decide(actor: Principal, pattern_id: Any, execution_id: Any, *, approved: Any = True, comment: Any = "",
           step_id: Any = None) -> tuple[dict[str, Any], list[Outgoing]]:
    """Approve (or reject) the approval step waiting in one of the pattern's runs.

    ``step_id`` defaults to the approval step that is waiting (user approval first, then the
    admin verification). Approving the verification marks the pattern verified.

    Raises:
        NotFound: unknown pattern, or an execution that is not one of its runs.
        Conflict: no approval waiting. Forbidden: the caller's role is below the step's.
        InvalidInput: ``approved``/``comment``/``step_id`` malformed (named).
    """
    actor.require("executions:write")
    pattern = get(actor, pattern_id)
    execution = queries.get_execution(actor, execution_id)
    if PatternRun.get_or_none((PatternRun.execution == execution.id) & (PatternRun.pattern == pattern.id)) is None:
        raise NotFound(f"execution {execution.id} is not a run of pattern workspace {pattern.id}")
    if step_id is None:
        waiting = StepExecution.get_or_none((StepExecution.execution == execution.id)
                                            & (StepExecution.status == "WAITING")
                                            & (StepExecution.step_type == "approval"))
        if waiting is None:
            raise Conflict(f"execution {execution.id} has no approval waiting")
        step_id = waiting.step_id
    with runs.transaction():
        decision, outgoing = signals.decide_approval(actor, execution.id, step_id, approved=approved, comment=comment)
        if approved is True:
            now = utcnow()
            if step_id == "admin_verification":
                PatternWorkspace.update(status="verified", verified_at=now, verified_by=actor.user_id).where(
                    PatternWorkspace.id == pattern.id).execute()
            elif step_id == "user_approval":
                PatternWorkspace.update(status="in_review", approved_at=now, approved_by=actor.user_id).where(
                    PatternWorkspace.id == pattern.id).execute()
    return decision, outgoing


def read_timeline(actor: Principal, mongo_db: Any, *, pattern_id: Any = None, execution_id: Any = None,
                  after: Any = None, limit: Any = None) -> dict[str, Any]:
    """The timeline of a pattern workspace, or of an execution with its whole retry chain.

    Raises:
        NotFound: unknown pattern or execution; InvalidInput: a bad ``after``/``limit``.
    """
    after_seq = parse_int(after, "after", 0, 2**63 - 1, 0)
    size = parse_int(limit, "limit", 1, timeline.MAX_READ, 500)
    if pattern_id is not None:
        pattern = get(actor, pattern_id)
        items = timeline.read(mongo_db, workspace_id=pattern.workspace_id, pattern_id=str(pattern.id),
                              after_seq=after_seq, limit=size) if mongo_db is not None else []
        return {"pattern_id": str(pattern.id), "items": items}
    execution = queries.get_execution(actor, execution_id)
    chain = retries.chain(execution)
    items = timeline.read(mongo_db, workspace_id=execution.workspace_id, execution_ids=[str(e.id) for e in chain],
                          after_seq=after_seq, limit=size) if mongo_db is not None else []
    return {"execution_id": str(execution.id), "retry_chain": [chain_dict(e) for e in chain], "items": items}


def chain_dict(row: Execution) -> dict[str, Any]:
    """One execution of a retry chain."""
    return {"id": str(row.id), "status": row.status, "parent_id": str(row.parent_id) if row.parent_id else None,
            "retry_count": row.retry_count, "max_retries": row.max_retries, "retry_reason": row.retry_reason,
            "phase": row.phase, "progress": row.progress, "created_at": stamp(row.created_at)}


def retry_chain(actor: Principal, execution_id: Any) -> dict[str, Any]:
    """An execution's retry chain, first to last."""
    execution = queries.get_execution(actor, execution_id)
    return {"execution_id": str(execution.id), "items": [chain_dict(e) for e in retries.chain(execution)]}


def parse_int(value: Any, field: str, low: int, high: int, default: int) -> int:
    """``value`` as an integer from ``low`` to ``high`` (``default`` when absent).

    Raises:
        InvalidInput: not an integer, or out of range (``field`` named).
    """
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(field, f"{str(value)[:40]!r} is not an integer") from None
    if not low <= number <= high:
        raise InvalidInput(field, f"must be from {low} to {high}")
    return number
