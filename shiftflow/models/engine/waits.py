"""Waiting steps and durable timers: wait, wait_event, approval, sub-workflows, timeouts.

A waiting step holds no message: it is a WAITING row with ``resume_at`` (when a timer
fires) and ``wait_key`` (what it waits for). The timer loop (``resume_due``) wakes due
rows, re-publishes steps whose retry backoff is over, times out steps and executions
past their limits. Nothing is held unacknowledged in RabbitMQ, so a wait of days
survives worker restarts and never meets the broker's consumer timeout.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound, PermanentError
from shiftflow.models.engine import leases, mongo_log, retries, runs, timeline
from shiftflow.models.engine.start import start_execution
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.workflows import Workflow

#: Imported for its finish hook (timeline, automatic retries): every process that finishes
#: executions imports this module.
_FINISH_HOOK = retries.after_finish

#: The longest a wait step may sleep.
MAX_WAIT_SECONDS = 366 * 86_400


class WaitError(PermanentError):
    """Raised when a wait's duration or time, an event key or a sub-workflow is invalid."""


def _parse_until(value: Any) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise WaitError(f"wait 'until' {value!r} is not an ISO-8601 time") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def event_key(workspace_id: Any, key: str) -> str:
    """The stored wait key of an event: namespaced by workspace (tenants never cross)."""
    return f"event:{workspace_id}:{key}"


def approval_key(execution_id: Any, step_id: str) -> str:
    """The stored wait key of an approval step."""
    return f"approval:{execution_id}:{step_id}"


def begin(claim: runs.Claim, inputs: dict[str, Any], stored: Any = None) -> list[Outgoing]:
    """Start a waiting step (wait, wait_event, approval, workflow): park it WAITING.

    ``stored`` is what the step row keeps of its inputs (rendered with secrets masked;
    ``inputs`` when not given).

    Raises:
        WaitError: bad duration, time, key or sub-workflow name.
    """
    assert claim.step is not None
    step = claim.definition.step(claim.step.step_id)
    now = utcnow()
    timeout_at = now + dt.timedelta(seconds=step.timeout) if step.timeout else None
    outgoing: list[Outgoing] = []
    resume_at: dt.datetime | None
    if step.type == "wait":
        if "until" in inputs:
            resume = _parse_until(inputs["until"])
        else:
            try:
                seconds = float(inputs.get("seconds", 0)) + 60 * float(inputs.get("minutes", 0))
                seconds += 3600 * float(inputs.get("hours", 0)) + 86_400 * float(inputs.get("days", 0))
            except (TypeError, ValueError):
                raise WaitError("wait needs numeric seconds/minutes/hours/days or an ISO 'until'") from None
            if not 0 <= seconds <= MAX_WAIT_SECONDS:
                raise WaitError(f"wait of {seconds} s is outside 0 to {MAX_WAIT_SECONDS} s")
            resume = now + dt.timedelta(seconds=seconds)
        key, resume_at = "timer", resume
    elif step.type == "wait_event":
        if not isinstance(inputs.get("key"), str | int) or str(inputs["key"]) == "":
            raise WaitError("wait_event needs a non-empty 'key'")
        key, resume_at = event_key(claim.execution.workspace_id, str(inputs["key"])), timeout_at
    elif step.type == "approval":
        key, resume_at = approval_key(claim.execution.id, step.id), timeout_at
    else:  # workflow: start the child, then wait for it
        key, resume_at = f"child:{claim.execution.id}:{step.id}:{claim.step.iteration}", timeout_at
        outgoing = _start_child(claim, inputs)
    with runs.transaction():
        StepExecution.update(status="WAITING", wait_key=key, resume_at=resume_at, timeout_at=None,
                             input=runs.masked(inputs if stored is None else stored)).where(
            (StepExecution.id == claim.step.id) & (StepExecution.status == "RUNNING")).execute()
        mongo_log.execution_log(claim.execution, f"step {step.id} waiting", step_id=step.id,
                           metadata={"for": key.split(":")[0], "resumeAt": resume_at})
        if step.type == "approval":
            timeline.approval_requested(claim.execution, step.id, inputs)
    return outgoing


def _start_child(claim: runs.Claim, inputs: dict[str, Any]) -> list[Outgoing]:
    assert claim.step is not None
    name = inputs.get("workflow")
    if not isinstance(name, str):
        raise WaitError("a workflow step needs 'workflow': the name of the sub-workflow")
    child = Workflow.get_or_none((Workflow.workspace == claim.execution.workspace_id) & (Workflow.name == name))
    if child is None:
        raise WaitError(f"sub-workflow {name!r} does not exist in this workspace")
    data = inputs.get("input", {})
    started = start_execution(TriggerPayload(
        workflow_id=str(child.id), dedup_key=f"sub:{claim.execution.id}:{claim.step.step_id}:{claim.step.iteration}",
        source="workflow", data=data if isinstance(data, dict) else {"value": data},
        priority=claim.execution.priority, parent_execution_id=str(claim.execution.id),
        parent_step_id=claim.step.step_id, parent_iteration=claim.step.iteration))
    return started.outgoing


def _resume(step: StepExecution, status: str, *, output: Any = None, error: str | None = None) -> list[Outgoing]:
    with runs.transaction():
        execution = runs.lock_execution(step.execution_id)
        definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
        return runs.record_step(execution, definition, step, status, output=output, error=error,
                                from_status=("WAITING", "RUNNING"))


def deliver_event(workspace_id: Any, key: str, data: dict[str, Any]) -> tuple[int, list[Outgoing]]:
    """Resume every step of ``workspace_id`` waiting for event ``key`` with ``data`` as output.

    Returns:
        (how many steps resumed, the messages to publish).
    """
    waiting = StepExecution.select().where((StepExecution.status == "WAITING")
                                           & (StepExecution.wait_key == event_key(workspace_id, key)))
    outgoing: list[Outgoing] = []
    count = 0
    for found in list(waiting):
        with runs.transaction():
            # Re-read under the execution's lock: an event sent twice at once, a timeout or
            # a cancel may have moved the step on since the query above.
            runs.lock_execution(found.execution_id)
            step = StepExecution.get_or_none((StepExecution.id == found.id) & (StepExecution.status == "WAITING"))
            if step is None:
                continue
            count += 1
            outgoing += _resume(step, "SUCCEEDED", output={"event": data})
    return count, outgoing


def run_event_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """The ``event`` step (a ``run_step`` handler): deliver ``with: {key, data}`` to the
    steps of this workspace waiting for ``key``; the output says how many resumed.

    Delivery and the step's completion commit together, so a redelivery finds the step
    done and resumes nothing twice.

    Raises:
        WaitError: no usable ``key``, or ``data`` is not an object.
    """
    key, data = inputs.get("key"), inputs.get("data", {})
    if not isinstance(key, str | int) or str(key) == "":
        raise WaitError("an event step needs a non-empty 'key'")
    if not isinstance(data, dict):
        raise WaitError("an event step's 'data' must be an object")
    with runs.transaction():
        resumed, outgoing = deliver_event(claim.execution.workspace_id, str(key), data)
        outgoing += runs.complete_step(claim, {"key": str(key), "resumed": resumed}, stored)
    return outgoing


def resume_approval(execution_id: Any, step_id: str, *, approved: bool, by: str, comment: str = "") -> list[Outgoing]:
    """Resume a waiting approval step with a decision: approved, it succeeds; rejected, it fails.

    The engine's part only: who may decide, and the audit entry, are ``signals.decide_approval``'s.

    Raises:
        NotFound: no approval of that execution and step is waiting.
    """
    step = StepExecution.get_or_none((StepExecution.status == "WAITING")
                                     & (StepExecution.wait_key == approval_key(execution_id, step_id)))
    if step is None:
        raise NotFound(f"execution {execution_id} has no approval step {step_id!r} waiting")
    decision = {"approved": approved, "by": by, "comment": comment, "at": utcnow().isoformat()}
    timeline.approval_decided(Execution.get_by_id(step.execution_id), step_id, approved=approved, by=by,
                              comment=comment)
    if approved:
        return _resume(step, "SUCCEEDED", output=decision)
    return _resume(step, "FAILED", output=decision, error=f"rejected by {by}: {comment}".strip())


def _due(query: Any, limit: int) -> list[Any]:
    query = query.limit(limit)
    if is_postgres():
        # Several timer loops (one per worker pool) share the work without doubling it.
        query = query.for_update(skip_locked=True)
    return list(query)


def resume_due(limit: int = 500) -> list[Outgoing]:
    """Fire due timers: wake waits, end backoffs, time out steps and executions."""
    now = utcnow()
    outgoing: list[Outgoing] = []
    with runs.transaction():
        backoffs = _due(StepExecution.select().where((StepExecution.status == "PENDING")
                                                     & (StepExecution.resume_at <= now)), limit)
        for step in backoffs:
            StepExecution.update(resume_at=None).where(StepExecution.id == step.id).execute()
            execution = Execution.get_by_id(step.execution_id)
            definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
            outgoing.append(runs.message_for(execution, definition, step.step_id, step.iteration))
    due = _due(StepExecution.select().where((StepExecution.status == "WAITING") & (StepExecution.resume_at <= now)),
               limit)
    for step in due:
        if step.wait_key == "timer":
            outgoing += _resume(step, "SUCCEEDED", output={"resumed_at": now.isoformat()})
        else:
            outgoing += _time_out(step)
    # A RUNNING step's holder keeps its own deadline and a lease (``leases``): a step is
    # taken from it only once the lease ran out, never because the database was down.
    # Only claims of an older version (no lease) are timed out here.
    late = _due(StepExecution.select().where((StepExecution.status == "RUNNING") & (StepExecution.timeout_at <= now)
                                             & StepExecution.lease_until.is_null()), limit)
    for step in late:
        outgoing += _time_out(step)
    outgoing += _resume_orphans(now, limit)
    for execution in _due(Execution.select().where(Execution.status.in_(("RUNNING", "PENDING"))
                                                   & (Execution.deadline_at <= now)), limit):
        with runs.transaction():
            locked = runs.lock_execution(execution.id)
            definition = runs.load_definition(locked.workflow_id, locked.workflow_version)
            outgoing += runs.finish_execution(locked, definition, "TIMED_OUT",
                                              error=f"execution timed out after {definition.timeout} s")
    return outgoing


def _resume_orphans(now: dt.datetime, limit: int) -> list[Outgoing]:
    """Re-publish RUNNING steps whose holder is gone (lease ran out): its message may be
    gone too (dropped as a copy while the holder lived). The next claim reconciles."""
    if not leases.leases_judgeable():
        return []
    outgoing: list[Outgoing] = []
    with runs.transaction():
        # ``completed_at IS NULL`` (true of every RUNNING step) reads the index of open steps.
        expired = _due(StepExecution.select().where((StepExecution.status == "RUNNING")
                                                    & StepExecution.completed_at.is_null()
                                                    & (StepExecution.lease_until < now)), limit)
        for step in expired:
            if not leases.holder_gone(step, now) or not leases.adopt(step, now):
                continue
            execution = Execution.get_by_id(step.execution_id)
            definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
            mongo_log.execution_log(execution, f"step {step.step_id} resumed: its holder's claim lease ran out",
                               level="warn", step_id=step.step_id,
                               metadata={"holder": step.claimed_by, "iteration": step.iteration})
            outgoing.append(runs.message_for(execution, definition, step.step_id, step.iteration))
    return outgoing


def _time_out(step: StepExecution) -> list[Outgoing]:
    execution = Execution.get_by_id(step.execution_id)
    definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
    spec = definition.step(step.step_id)
    if spec.on_timeout == "continue":
        return _resume(step, "SUCCEEDED", output={"timed_out": True})
    return _resume(step, "TIMED_OUT", error=f"step timed out after {spec.timeout} s")
