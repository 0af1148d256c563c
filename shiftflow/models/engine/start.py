"""Starting an execution once: the fast start, or the locked start with flow control.

``start_execution`` is what a trigger message becomes (``run_trigger``), and what a
sub-workflow step (``waits``) and a manual run call. Both ways plan the first steps with
the one plan → inline → rows loop (``inline.unroll``) that ``runs.advance`` also uses.

The fast start: most executions need no lock to start (no ``max_executions``, no
concurrency lane, no parent). For them the pure steps that are ready at once
(conditions, switches, transforms, stop, fail) run in memory first, and one short
transaction writes the execution (already final if nothing else is left) and all its
step rows. On PostgreSQL that is one statement (``prepared_sql.insert_with_children``: the
execution's INSERT ignoring a duplicate key, and the steps' INSERT only if it inserted),
atomic without BEGIN/COMMIT. A duplicate delivery writes nothing. The trigger path is then
two statements: read the workflow, write everything (docs/benchmarks.md#the-trigger-path).

The locked start takes a ``max_executions`` slot, queues the execution PENDING when its
concurrency lane is full (unless its workspace is at its cap of queued executions), and
otherwise begins running it (``runs.begin_running``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from shiftflow.kernel import metrics
from shiftflow.kernel.contracts import TriggerPayload, execution_id_for
from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.definition import Definition
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.steps import TERMINAL
from shiftflow.models.engine import (
    connection_secrets,
    flow_control,
    inline,
    mongo_log,
    prepared_sql,
    quotas,
    runs,
)
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.workflows import Workflow


def start_execution(payload: TriggerPayload) -> runs.Started:
    """Create the execution for ``(workflow, dedup_key)`` once and start its first steps.

    A second call with the same key creates nothing and re-publishes the steps still
    pending (the first call may have committed and crashed before publishing). A
    workflow at its ``max_executions`` starts nothing; one at its concurrency limit for
    the execution's key queues the execution PENDING until another one finishes, unless
    its workspace is at its cap of queued executions (``quotas.refuse_queueing``): then
    the execution ends FAILED, its error naming the cap.

    Raises:
        NotFound: the workflow or its current version does not exist.
    """
    workflow = prepared_sql.get_by_id(Workflow, payload.workflow_id)
    if workflow is None:
        raise NotFound(f"workflow {payload.workflow_id} does not exist")
    definition = runs.load_definition(workflow.id, workflow.current_version)
    if _eligible(workflow, definition, payload):
        return _fast_start(workflow, definition, payload)
    with runs.transaction():
        if not flow_control.take_execution_slot(workflow):
            return runs.Started(None, False, [], f"workflow {workflow.name!r} reached max_executions")
        now = utcnow()
        received = (dt.datetime.fromtimestamp(payload.received_at, dt.UTC).replace(tzinfo=None)
                    if payload.received_at else now)
        key = flow_control.concurrency_key(definition, payload.data)
        inserted = prepared_sql.insert_rows(Execution, [dict(
            id=execution_id_for(workflow.id, payload.dedup_key), workflow=workflow.id,
            workflow_version=workflow.current_version, workspace=workflow.workspace_id,
            dedup_key=payload.dedup_key, source=payload.source, status="PENDING", priority=payload.priority,
            trigger_data=payload.data, received_at=received, created_at=now, concurrency_key=key,
            parent=payload.parent_execution_id or None, parent_step_id=payload.parent_step_id or None,
            parent_iteration=payload.parent_iteration if payload.parent_step_id else None,
            triggered_by=payload.triggered_by or None, lineage_root=child_lineage_root(payload),
        )], ignore_conflicts=True)
        execution = lock_execution_by_key(workflow.id, payload.dedup_key)
        if not inserted:
            flow_control.give_back_execution_slot(workflow)
            return runs.duplicate(execution)
        runs.announce_created(execution, payload)
        if not flow_control.may_run_now(execution, definition):
            refusal = quotas.refuse_queueing(execution, get_settings())
            if refusal is not None:
                # Over its workspace's cap: it ends FAILED with the reason (visible, re-runnable),
                # rather than waiting in a line that one tenant could grow without bound.
                metrics.EXECUTIONS.labels("refused").inc()
                return runs.Started(execution, True, runs.finish_execution(execution, definition, "FAILED", error=refusal),
                               "refused")
            mongo_log.execution_log(execution, "execution queued: concurrency limit reached",
                               metadata={"key": key})
            return runs.Started(execution, True, [], "queued")
        outgoing = runs.begin_running(execution, definition)
    return runs.Started(execution, True, outgoing)


def child_lineage_root(payload: TriggerPayload) -> Any:
    """The lineage root of a sub-workflow execution about to start: the first child that any
    execution of its parent's re-run lineage started for the same step and iteration (None
    for the first one, and for an execution that is not a sub-workflow). A parent's re-run
    starts its failed sub-workflow step again; the new child then repeats the first one,
    and its swaps are the same swaps (``swap_lineage``)."""
    if not (payload.parent_execution_id and payload.parent_step_id):
        return None
    parent = Execution.get_or_none(Execution.id == payload.parent_execution_id)
    if parent is None:
        return None
    root = parent.lineage_root or parent.id
    lineage = Execution.select(Execution.id).where((Execution.id == root) | (Execution.lineage_root == root))
    first = (
        Execution.select(Execution.id, Execution.lineage_root)
        .where(
            Execution.parent.in_(lineage)
            & (Execution.parent_step_id == payload.parent_step_id)
            & (Execution.parent_iteration == payload.parent_iteration)
        )
        .order_by(Execution.created_at)
        .first()
    )
    return None if first is None else first.lineage_root or first.id


def lock_execution_by_key(workflow_id: Any, dedup_key: str) -> Execution:
    """The execution of ``(workflow, dedup_key)``, row-locked on PostgreSQL."""
    query = Execution.select().where((Execution.workflow == workflow_id) & (Execution.dedup_key == dedup_key))
    if is_postgres():
        query = query.for_update()
    return query.get()


def _eligible(workflow: Workflow, definition: Definition, payload: TriggerPayload) -> bool:
    """True when starting needs no lock: no execution cap, no concurrency lane, no parent."""
    return workflow.max_executions is None and definition.concurrency is None and not payload.parent_execution_id


def _fast_start(workflow: Workflow, definition: Definition, payload: TriggerPayload) -> runs.Started:
    """Start an eligible execution in one short transaction (see the module docstring)."""
    now = utcnow()
    execution_id = execution_id_for(workflow.id, payload.dedup_key)
    trigger = payload.data
    outputs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    ready_messages: list[str] = []
    inline_logs: list[tuple[str, str, Any, str | None, Any]] = []
    context_base = {"trigger": trigger, "vars": definition.raw.get("vars", {}),
                    "execution": {"id": str(execution_id), "workflow_id": str(workflow.id)},
                    "secrets": connection_secrets.UNAVAILABLE}
    unrolled = inline.unroll(definition, {}, context_base)
    for decided in unrolled.steps:
        step_id = decided.step_id
        if decided.status == "PENDING":
            rows.append(_row(execution_id, definition, step_id, "PENDING", now))
            ready_messages.append(step_id)
        elif not decided.inline:  # SKIPPED
            rows.append(_row(execution_id, definition, step_id, decided.status, now, completed_at=now))
        else:
            if decided.status == "SUCCEEDED":
                outputs[step_id] = decided.output
            rows.append(_row(execution_id, definition, step_id, decided.status, now, output=decided.output,
                             error=decided.error, attempts=1, started_at=decided.started_at,
                             completed_at=decided.completed_at,
                             duration_ms=runs.ms_between(decided.started_at, decided.completed_at or now)))
            inline_logs.append((step_id, decided.status, decided.output, decided.error, rows[-1]["duration_ms"]))
    decision = unrolled.decision
    if decision.stopped:
        for row in rows:
            if row["status"] == "PENDING":
                row.update(status="CANCELLED", completed_at=now, error="stopped by a stop step")
        ready_messages = []
    finished = decision.finished or (decision.stopped and all(r["status"] in TERMINAL for r in rows))
    status = ("FAILED" if decision.failed else "SUCCEEDED") if finished else "RUNNING"
    failed_rows = [r for r in rows if r["status"] == "FAILED"]
    error = f"step {failed_rows[0]['step_id']}: {failed_rows[0]['error']}" if failed_rows else None
    received = (dt.datetime.fromtimestamp(payload.received_at, dt.UTC).replace(tzinfo=None)
                if payload.received_at else now)
    done_at = utcnow()
    values: dict[str, Any] = {
        "id": execution_id, "workflow": workflow.id, "workflow_version": workflow.current_version,
        "workspace": workflow.workspace_id, "dedup_key": payload.dedup_key, "source": payload.source,
        "status": status, "priority": payload.priority, "trigger_data": trigger, "received_at": received,
        "created_at": now, "started_at": now,
        "progress": 100 if status == "SUCCEEDED" else min(99, int(100 * sum(
            1 for r in rows if r["status"] in TERMINAL) / max(1, len(definition.steps)))),
        "deadline_at": now + dt.timedelta(seconds=definition.timeout) if definition.timeout else None,
        "triggered_by": payload.triggered_by or None,
    }
    if finished:
        values.update(completed_at=done_at, result=runs.capped_result(outputs), error=error, duration_ms=runs.ms_between(now, done_at))
    with mongo_log.deferred():
        # One statement on PostgreSQL: the execution unless it is a duplicate, and its steps.
        if not prepared_sql.insert_with_children(Execution, values, StepExecution, rows):
            return runs.duplicate(Execution.get((Execution.workflow == workflow.id)
                                                & (Execution.dedup_key == payload.dedup_key)))
        execution = Execution(**{k: v for k, v in values.items() if k not in ("workflow", "workspace")},
                              workflow=workflow.id, workspace=workflow.workspace_id)
        runs.announce_created(execution, payload)
        for step_id, step_status, output, step_error, took in inline_logs:
            runs.announce_step(execution, step_id, definition.step(step_id).type, step_status,
                               {"inline": True, "output": output, "error": step_error, "durationMs": took})
        if finished:
            runs.announce_finished(execution, len(rows))
    messages = [runs.message_for(execution, definition, step_id, first=True) for step_id in ready_messages]
    return runs.Started(execution, True, messages)


def _row(execution_id: uuid.UUID, definition: Definition, step_id: str, status: str, created: dt.datetime,
         **fields: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "execution": execution_id, "step_id": step_id, "iteration": 0,
            "step_type": definition.step(step_id).type, "status": status, "created_at": created, **fields}
