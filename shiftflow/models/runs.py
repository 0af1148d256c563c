"""Execution commands: start an execution once, claim a step, record its result.

Every function here is safe to run twice for the same message: unique keys and status
checks turn a redelivery into a no-op that only re-publishes what comes next. The
callers (actors) commit first, publish second and ack last (DESIGN.md 1).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from shiftflow.kernel import metrics
from shiftflow.kernel.contracts import FOLLOW_ON_BOOST, Priority, StepPayload, TriggerPayload
from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.definition import Definition, validate
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.steps import TERMINAL, StepState, plan
from shiftflow.models import logs
from shiftflow.models.base import utcnow
from shiftflow.models.executions import Execution, StepExecution
from shiftflow.models.workflows import Workflow, WorkflowVersion


@dataclass
class Started:
    """The result of ``start_execution``."""

    execution: Execution | None
    created: bool
    outgoing: list[Outgoing] = field(default_factory=list)
    reason: str = ""


@dataclass
class Claim:
    """The result of ``claim_step``: run it (``step`` set) or not (``outgoing`` to re-publish)."""

    step: StepExecution | None
    execution: Execution
    definition: Definition
    outgoing: list[Outgoing] = field(default_factory=list)
    reason: str = ""


def _ms(start: dt.datetime | None, end: dt.datetime) -> int | None:
    return None if start is None else max(1, int((end - start).total_seconds() * 1000))


def load_definition(workflow_id: Any, version: int) -> Definition:
    """The validated definition of one pinned workflow version.

    Raises:
        NotFound: no such version.
    """
    row = WorkflowVersion.get_or_none(workflow=workflow_id, version=version)
    if row is None:
        raise NotFound(f"workflow {workflow_id} has no version {version}")
    return validate(row.definition)


def _message_for(execution: Execution, definition: Definition, step_id: str, *, first: bool) -> Outgoing:
    base = int(Priority.parse(execution.priority))
    # Follow-on steps of running executions go ahead of the first steps of new ones.
    priority = base if first else base + FOLLOW_ON_BOOST
    return Outgoing(
        definition.step(step_id).actor,
        StepPayload(execution_id=str(execution.id), step_id=step_id),
        priority=priority,
    )


def _create_steps(execution: Execution, definition: Definition, ready: list[str], skipped: list[str]) -> None:
    now = utcnow()
    rows = [
        {"id": uuid.uuid4(), "execution": execution.id, "step_id": sid, "iteration": 0,
         "step_type": definition.step(sid).type, "status": "PENDING", "created_at": now}
        for sid in ready
    ] + [
        {"id": uuid.uuid4(), "execution": execution.id, "step_id": sid, "iteration": 0,
         "step_type": definition.step(sid).type, "status": "SKIPPED", "created_at": now, "completed_at": now}
        for sid in skipped
    ]
    if rows:
        StepExecution.insert_many(rows).on_conflict_ignore().execute()


def _pending_messages(execution: Execution, definition: Definition, *, first: bool) -> list[Outgoing]:
    pending = StepExecution.select(StepExecution.step_id).where(
        (StepExecution.execution == execution.id) & (StepExecution.status.in_(("PENDING", "RUNNING")))
    )
    return [_message_for(execution, definition, row.step_id, first=first) for row in pending]


def start_execution(payload: TriggerPayload) -> Started:
    """Create the execution for ``(workflow, dedup_key)`` once and decide its first steps.

    A second call with the same key creates nothing and re-publishes the steps still
    pending (the first call may have committed and crashed before publishing).

    Raises:
        NotFound: the workflow or its current version does not exist.
    """
    workflow = Workflow.get_or_none(Workflow.id == payload.workflow_id)
    if workflow is None:
        raise NotFound(f"workflow {payload.workflow_id} does not exist")
    definition = load_definition(workflow.id, workflow.current_version)
    new_id = uuid.uuid4()
    now = utcnow()
    with database.atomic():
        inserted = Execution.insert(
            id=new_id, workflow=workflow.id, workflow_version=workflow.current_version,
            workspace=workflow.workspace_id, dedup_key=payload.dedup_key, source=payload.source,
            status="RUNNING", priority=payload.priority, trigger_data=payload.data,
            received_at=dt.datetime.fromtimestamp(payload.received_at, dt.UTC).replace(tzinfo=None)
            if payload.received_at else None,
            created_at=now, started_at=now,
        ).on_conflict_ignore().execute()
        del inserted  # SQLite and PostgreSQL report ignored inserts differently; read the row back.
        execution = Execution.get((Execution.workflow == workflow.id) & (Execution.dedup_key == payload.dedup_key))
        created = execution.id == new_id
        if not created:
            metrics.EXECUTIONS.labels("duplicate").inc()
            return Started(execution, False, _pending_messages(execution, definition, first=True), "duplicate")
        Workflow.update(execution_count=Workflow.execution_count + 1, last_executed_at=now).where(
            Workflow.id == workflow.id).execute()
        first = plan(definition, {})
        _create_steps(execution, definition, first.ready, first.skipped)
    metrics.EXECUTIONS.labels("created").inc()
    logs.execution_log(execution, "execution created", metadata={"source": payload.source,
                                                                  "dedupKey": payload.dedup_key})
    logs.analytics_event("workflow_triggered", execution, {"source": payload.source})
    return Started(execution, True, [_message_for(execution, definition, s, first=True) for s in first.ready])


def _locked_execution(execution_id: Any) -> Execution:
    query = Execution.select().where(Execution.id == execution_id)
    if is_postgres():
        # Serialise step completions of one execution, so a join cannot be missed.
        query = query.for_update()
    execution = query.get_or_none()
    if execution is None:
        raise NotFound(f"execution {execution_id} does not exist")
    return execution


def claim_step(payload: StepPayload, *, delivery_limit: int, message_id: str | None = None) -> Claim:
    """Count this delivery and mark the step RUNNING, unless it is already finished.

    The attempt count is committed before any work, so a message that kills its
    process is quarantined after ``delivery_limit`` deliveries instead of looping.

    ``message_id`` identifies the delivery: RabbitMQ redelivers a message with the same
    id (after a crash, or a Dramatiq retry), so the same id takes a RUNNING step over,
    while another id for a RUNNING step is a duplicate publish and is dropped.
    """
    with database.atomic():
        execution = _locked_execution(payload.execution_id)
        definition = load_definition(execution.workflow_id, execution.workflow_version)
        step = StepExecution.get_or_none(
            (StepExecution.execution == execution.id) & (StepExecution.step_id == payload.step_id)
            & (StepExecution.iteration == payload.iteration))
        if step is None:
            raise NotFound(f"execution {execution.id} has no step {payload.step_id!r}")
        if step.status in TERMINAL:
            # Redelivered after the result was committed: only re-publish what follows.
            metrics.STEPS.labels(step.step_type, "already_done").inc()
            return Claim(None, execution, definition, _pending_messages(execution, definition, first=False),
                         "already done")
        if step.status == "RUNNING" and message_id and step.claimed_by and step.claimed_by != message_id:
            metrics.STEPS.labels(step.step_type, "duplicate").inc()
            return Claim(None, execution, definition, [], "running under another message")
        if execution.status in TERMINAL:
            step.status, step.completed_at = "CANCELLED", utcnow()
            step.save()
            return Claim(None, execution, definition, [], f"execution is {execution.status}")
        step.attempts += 1
        # Deliveries that ended without a recorded outcome (a crash, a kill) are the
        # attempts not explained by recorded retries.
        unexplained = step.attempts - step.retry_count
        if unexplained > delivery_limit:
            reason = f"quarantined: delivered {unexplained} times without finishing (limit {delivery_limit})"
            _fail(execution, step, reason)
            metrics.STEPS.labels(step.step_type, "quarantined").inc()
            return Claim(None, execution, definition, [], reason)
        step.status = "RUNNING"
        step.claimed_by = message_id
        step.started_at = step.started_at or utcnow()
        step.save()
    logs.execution_log(execution, f"step {step.step_id} started", step_id=step.step_id,
                       metadata={"attempt": step.attempts})
    return Claim(step, execution, definition)


def _fail(execution: Execution, step: StepExecution, error: str) -> None:
    now = utcnow()
    step.status, step.error, step.completed_at = "FAILED", error, now
    step.duration_ms = _ms(step.started_at, now)
    step.save()
    _finish_execution(execution, "FAILED", now, error=f"step {step.step_id}: {error}")


def _finish_execution(execution: Execution, status: str, now: dt.datetime, *, error: str | None = None,
                      result: Any = None) -> None:
    if execution.status in TERMINAL:
        return
    execution.status, execution.completed_at, execution.error = status, now, error
    execution.result = result
    execution.duration_ms = _ms(execution.started_at, now)
    execution.progress = 100 if status == "SUCCEEDED" else execution.progress
    execution.save()
    counter = Workflow.successful_executions if status == "SUCCEEDED" else Workflow.failed_executions
    Workflow.update({counter: counter + 1}).where(Workflow.id == execution.workflow_id).execute()


def _after_finish(execution: Execution, status: str) -> None:
    outcome = status.lower()
    metrics.EXECUTIONS.labels(outcome).inc()
    if execution.received_at and execution.completed_at:
        metrics.TRIGGER_TO_DONE_SECONDS.labels(outcome).observe(
            max(0.0, (execution.completed_at - execution.received_at).total_seconds()))
    logs.execution_log(execution, f"execution {outcome}", level="info" if status == "SUCCEEDED" else "error",
                       metadata={"durationMs": execution.duration_ms, "error": execution.error})
    logs.analytics_event("workflow_executed", execution, {"status": outcome, "duration": execution.duration_ms})


def complete_step(claim: Claim, output: Any) -> list[Outgoing]:
    """Record a step's output, plan what follows, and return the messages to publish."""
    assert claim.step is not None
    step = claim.step
    now = utcnow()
    with database.atomic():
        execution = _locked_execution(claim.execution.id)
        updated = StepExecution.update(
            status="SUCCEEDED", output=output, error=None, completed_at=now,
            duration_ms=_ms(step.started_at, now),
        ).where((StepExecution.id == step.id) & (StepExecution.status == "RUNNING")).execute()
        if not updated:
            # A duplicate delivery finished first; it already planned what follows.
            return _pending_messages(execution, claim.definition, first=False)
        rows = StepExecution.select().where(StepExecution.execution == execution.id)
        states = {r.step_id: StepState(r.status, r.output) for r in rows}
        decision = plan(claim.definition, states)
        _create_steps(execution, claim.definition, decision.ready, decision.skipped)
        done = len(states) + len(decision.ready) + len(decision.skipped)
        execution.progress = min(99, int(100 * done / max(1, len(claim.definition.steps))))
        if decision.finished:
            outputs = {sid: s.output for sid, s in states.items() if s.status == "SUCCEEDED"}
            _finish_execution(execution, "FAILED" if decision.failed else "SUCCEEDED", now, result=outputs)
        else:
            execution.save()
    metrics.STEPS.labels(step.step_type, "succeeded").inc()
    logs.execution_log(execution, f"step {step.step_id} succeeded", step_id=step.step_id,
                       metadata={"durationMs": _ms(step.started_at, now), "output": output})
    if decision.finished:
        _after_finish(execution, execution.status)
    return [_message_for(execution, claim.definition, s, first=False) for s in decision.ready]


def fail_step(claim: Claim, error: str) -> None:
    """Record a permanent failure of a step; the execution fails with it."""
    assert claim.step is not None
    with database.atomic():
        execution = _locked_execution(claim.execution.id)
        step = StepExecution.get_by_id(claim.step.id)
        if step.status != "RUNNING":
            return
        _fail(execution, step, error)
    metrics.STEPS.labels(step.step_type, "failed").inc()
    logs.execution_log(execution, f"step {step.step_id} failed", level="error", step_id=step.step_id,
                       metadata={"error": error})
    _after_finish(execution, "FAILED")


def note_retry(claim: Claim, error: str) -> int:
    """Record a transient failure before the message is retried; return the retry count."""
    assert claim.step is not None
    StepExecution.update(retry_count=StepExecution.retry_count + 1, error=error).where(
        StepExecution.id == claim.step.id).execute()
    logs.execution_log(claim.execution, f"step {claim.step.step_id} will retry", level="warn",
                       step_id=claim.step.step_id, metadata={"error": error})
    return int(claim.step.retry_count) + 1


def step_context(execution: Execution, definition: Definition) -> dict[str, Any]:
    """The data a step's ``{{ references }}`` may read: trigger, earlier outputs, vars."""
    outputs = {
        row.step_id: {"output": row.output, "status": row.status}
        for row in StepExecution.select(StepExecution.step_id, StepExecution.output, StepExecution.status)
        .where((StepExecution.execution == execution.id) & (StepExecution.status == "SUCCEEDED"))
    }
    return {"trigger": execution.trigger_data, "steps": outputs, "vars": definition.raw.get("vars", {}),
            "execution": {"id": str(execution.id), "workflow_id": str(execution.workflow_id)}}


__all__ = ["Claim", "Started", "claim_step", "complete_step", "fail_step", "note_retry", "start_execution",
           "step_context", "load_definition"]
