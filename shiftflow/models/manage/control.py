"""Control commands on executions: manual trigger, cancel, re-run (dead letters: ``models.manage.replay``).

Each command decides in one transaction (with its audit-log entry) and returns the
messages to publish after the commit, like the engine's own commands (commit first,
publish second). ``defer_to_timers`` is the fallback when that publish fails: the new
steps get a due ``resume_at`` and the timer loop of any worker pool publishes them,
so a broker blip never strands a committed re-run.

* **cancel**: the execution becomes CANCELLED and its PENDING, WAITING and RUNNING step
  rows CANCELLED (``runs.finish_execution``: counters, logs, the next execution of its
  concurrency lane). A step already running finishes its current call, but its result
  is refused (the row is no longer RUNNING) and nothing is planned after a terminal
  execution. Sub-workflow executions it waits for are cancelled with it.
* **rerun**: a *new* execution (``parent`` = the old one, dedup key
  ``rerun:<old id>:<n>``, or ``rerun:<old id>:key:<idempotency key>``) on the same pinned
  version and trigger data, starting with copies of the old execution's SUCCEEDED step
  rows, so only the failed step and what follows run again. It does not count against
  ``max_executions`` (the run it repeats was counted) but waits for a slot of its
  concurrency lane like any execution. Every re-run carries its lineage's root
  (``lineage_root``): the first execution, which re-runs of re-runs repeat too. **One
  active re-run per lineage**: while one has not ended, another is a ``Conflict`` naming
  it (two operators, a double click, a retried request). The same idempotency key
  returns the same re-run. SideShift swaps rely on the lineage for one order per swap
  (``swap_lineage``); this rule only keeps operators from racing each other.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from shiftflow.kernel.contracts import Priority, StepPayload, TriggerPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.steps import TERMINAL
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine import flow_control, mongo_log, runs
from shiftflow.models.manage import audit, queries
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution

#: Execution statuses a re-run may start from.
RERUNNABLE = ("FAILED", "CANCELLED", "TIMED_OUT")
#: Deepest chain of sub-workflows a cancel follows.
MAX_CANCEL_DEPTH = 16
MAX_IDEMPOTENCY_KEY = 200


# --------------------------------------------------------------------------- trigger


def manual_trigger(
    actor: Principal, workflow_id: Any, data: Any, *, priority: Any = None, idempotency_key: str | None = None
) -> TriggerPayload:
    """Check a manual trigger and build its ``triggers.start`` payload (the caller publishes
    it, then calls ``record_trigger``).

    The dedup key is ``manual:<idempotency key>``, or ``manual:<new uuid>`` without one: a
    client retrying with the same ``Idempotency-Key`` gets the same single execution.

    Raises:
        NotFound: no such workflow in the caller's workspace.
        Conflict: the workflow is not ACTIVE.
        InvalidInput: ``input`` is not a JSON object, a bad priority or idempotency key.
    """
    actor.require("executions:write")
    workflow = queries.get_workflow(actor, workflow_id)
    if workflow.status != "ACTIVE":
        raise Conflict(f"workflow {workflow.name!r} is {workflow.status}: activate it first")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("input", "expected a JSON object")
    problem = unstorable(data)
    if problem:
        raise InvalidInput("input", problem)
    try:
        level = Priority.parse(priority if isinstance(priority, str) or priority is None else "?")
    except ValueError as exc:
        raise InvalidInput("priority", str(exc)) from None
    _check_idempotency_key(idempotency_key)
    key = idempotency_key or uuid.uuid4().hex
    return TriggerPayload(
        workflow_id=str(workflow.id),
        dedup_key=f"manual:{key}",
        source="manual",
        data=data,
        received_at=time.time(),
        priority=level.name,
        triggered_by=str(actor.user_id) if actor.user_id else "",
    )


def _check_idempotency_key(key: str | None) -> None:
    """Raises InvalidInput unless ``key`` is None or 1-200 printable ASCII characters."""
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable() and key.isascii()):
        raise InvalidInput("Idempotency-Key", f"expected 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")


def record_trigger(actor: Principal, payload: TriggerPayload) -> None:
    """Write the audit entry of a published manual trigger."""
    audit.record(
        actor,
        "execution.triggered",
        "workflow",
        payload.workflow_id,
        after={
            "execution_key": payload.dedup_key,
            "priority": payload.priority,
            "input_keys": sorted(payload.data)[:50],
        },
    )


# --------------------------------------------------------------------------- cancel


def _cancel_locked(execution: Execution, reason: str, depth: int) -> list[Outgoing]:
    definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
    outgoing = runs.finish_execution(execution, definition, "CANCELLED", error=reason)
    if depth >= MAX_CANCEL_DEPTH:
        return outgoing
    children = Execution.select(Execution.id).where(
        (Execution.parent == execution.id)
        & Execution.parent_step_id.is_null(False)
        & ~Execution.status.in_(tuple(TERMINAL))
    )
    for child in children:
        locked = runs.lock_execution(child.id)
        if locked.status not in TERMINAL:
            outgoing += _cancel_locked(locked, f"parent execution {execution.id} was cancelled", depth + 1)
    return outgoing


def cancel(actor: Principal, execution_id: Any) -> tuple[Execution, list[Outgoing]]:
    """Cancel an execution that has not finished.

    Returns:
        The cancelled execution and the messages to publish after commit (the next
        execution of its concurrency lane, if one was waiting).

    Raises:
        NotFound: no such execution in the caller's workspace.
        Conflict: it has finished already.
    """
    actor.require("executions:write")
    with runs.transaction():
        found = queries.get_execution(actor, execution_id)
        execution = runs.lock_execution(found.id)
        if execution.status in TERMINAL:
            raise Conflict(f"execution {execution.id} is {execution.status} already")
        before = queries.execution_dict(execution)
        outgoing = _cancel_locked(execution, f"cancelled by {actor.who}", 0)
        audit.record(
            actor,
            "execution.cancelled",
            "execution",
            execution.id,
            before=before,
            after=queries.execution_dict(execution),
            workspace_id=execution.workspace_id,
        )
    return execution, outgoing


# --------------------------------------------------------------------------- rerun


def _copy_succeeded(old: Execution, new: Execution) -> int:
    """Copy the SUCCEEDED rows (every iteration of steps whose header succeeded)."""
    rows = list(
        StepExecution.select().where(
            (StepExecution.execution == old.id) & (StepExecution.status == "SUCCEEDED")
        )
    )
    done = {r.step_id for r in rows if r.iteration == 0}
    copies = [
        {
            "id": uuid.uuid4(),
            "execution": new.id,
            "step_id": r.step_id,
            "iteration": r.iteration,
            "step_type": r.step_type,
            "status": "SUCCEEDED",
            "input": r.input,
            "output": r.output,
            "attempts": r.attempts,
            "retry_count": r.retry_count,
            "created_at": r.created_at,
            "started_at": r.started_at,
            "completed_at": r.completed_at,
            "duration_ms": r.duration_ms,
        }
        for r in rows
        if r.step_id in done
    ]
    for copy in copies:
        StepExecution.insert(copy).execute()
    return len(copies)


@dataclass(frozen=True)
class Rerun:
    """The outcome of ``start_rerun``: the re-run, the messages to publish after the commit,
    and whether it was made now (False: an earlier request with the same idempotency key
    made it, and ``outgoing`` re-sends what that one may have failed to publish)."""

    execution: Execution
    outgoing: list[Outgoing]
    created: bool


def rerun(actor: Principal, execution_id: Any) -> tuple[Execution, list[Outgoing]]:
    """``start_rerun`` without an idempotency key: the new execution and its messages."""
    made = start_rerun(actor, execution_id)
    return made.execution, made.outgoing


def start_rerun(actor: Principal, execution_id: Any, *, idempotency_key: str | None = None) -> Rerun:
    """Start a new execution that repeats a failed one from its failed step.

    The lineage's root execution is locked first, so concurrent requests on any execution
    of one lineage decide one after the other.

    Parameters:
        idempotency_key: a retry with the same key (for the same execution) returns the
            re-run the first request made, whatever happened since, and makes no other.

    Raises:
        NotFound: no such execution in the caller's workspace.
        Conflict: the execution did not fail (or time out, or get cancelled), or a re-run
            of its lineage has not ended yet (the message names it).
        InvalidInput: a malformed idempotency key.
    """
    actor.require("executions:write")
    _check_idempotency_key(idempotency_key)
    with runs.transaction():
        found = queries.get_execution(actor, execution_id)
        root_id = found.lineage_root or found.id
        if root_id != found.id and Execution.select().where(Execution.id == root_id).exists():
            runs.lock_execution(root_id)  # lock order: the root, then its descendants
        old = runs.lock_execution(found.id)
        prefix = f"rerun:{old.id}:"
        if idempotency_key is not None:
            earlier = Execution.get_or_none(
                (Execution.workflow == old.workflow_id) & (Execution.dedup_key == f"{prefix}key:{idempotency_key}")
            )
            if earlier is not None:
                definition = runs.load_definition(earlier.workflow_id, earlier.workflow_version)
                again = runs.pending_messages(earlier, definition) if earlier.status == "RUNNING" else []
                return Rerun(earlier, again, created=False)
        if old.status not in RERUNNABLE:
            raise Conflict(
                f"execution {old.id} is {old.status}: only {', '.join(RERUNNABLE)} executions re-run"
            )
        active = (
            Execution.select()
            .where(
                (Execution.lineage_root == root_id)
                & (Execution.source == "rerun")
                & ~Execution.status.in_(tuple(TERMINAL))
            )
            .order_by(Execution.created_at)
            .first()
        )
        if active is not None:
            raise Conflict(
                f"execution {active.id}, a re-run of {active.parent_id}, is {active.status}: one re-run "
                f"of a lineage at a time; wait for it to end or cancel it, then re-run again"
            )
        n = (
            Execution.select()
            .where((Execution.parent == old.id) & Execution.dedup_key.startswith(prefix))
            .count()
            + 1
        )
        definition = runs.load_definition(old.workflow_id, old.workflow_version)
        new_id = uuid.uuid4()
        now = utcnow()
        Execution.insert(
            id=new_id,
            workflow=old.workflow_id,
            workflow_version=old.workflow_version,
            workspace=old.workspace_id,
            dedup_key=f"{prefix}key:{idempotency_key}" if idempotency_key is not None else f"{prefix}{n}",
            source="rerun",
            status="PENDING",
            priority=old.priority,
            trigger_data=old.trigger_data,
            received_at=now,
            created_at=now,
            concurrency_key=old.concurrency_key,
            parent=old.id,
            lineage_root=root_id,
            retry_count=old.retry_count + 1,
            max_retries=old.max_retries,
            retry_reason=(old.error or old.status)[:2000],
            triggered_by=actor.user_id,
            title=old.title,
        ).execute()
        new = runs.lock_execution(new_id)
        copied = _copy_succeeded(old, new)
        mongo_log.execution_log(
            new,
            f"execution created: re-run {n} of {old.id}",
            metadata={"parent": str(old.id), "lineageRoot": str(root_id), "copiedSteps": copied},
        )
        outgoing = runs.begin_running(new, definition) if flow_control.may_run_now(new, definition) else []
        audit.record(
            actor,
            "execution.rerun",
            "execution",
            old.id,
            before=queries.execution_dict(old),
            after=queries.execution_dict(new),
            workspace_id=old.workspace_id,
            metadata={"copied_steps": copied, "idempotency_key": idempotency_key},
        )
    return Rerun(new, outgoing, created=True)


def defer_to_timers(outgoing: list[Outgoing]) -> int:
    """Hand unsent step messages to the timer loop (a due ``resume_at``); returns how many.

    Raises:
        ValueError: a message is not a step message (only steps have rows to park).
    """
    now = utcnow()
    count = 0
    with runs.transaction():
        for out in outgoing:
            if not isinstance(out.payload, StepPayload):
                raise ValueError(f"cannot defer a {out.actor} message to the timer loop")
            count += (
                StepExecution.update(resume_at=now)
                .where(
                    (StepExecution.execution == out.payload.execution_id)
                    & (StepExecution.step_id == out.payload.step_id)
                    & (StepExecution.iteration == out.payload.iteration)
                    & (StepExecution.status == "PENDING")
                    & StepExecution.resume_at.is_null()
                )
                .execute()
            )
    return count
