"""Flow control: max executions, concurrency limits per workflow and key, what runs next.

Why the workflow row is not touched on every execution: a counter update locks the row
until commit, which would serialise every execution of a busy workflow. The row is
locked only when the workflow asks for a limit (``max_executions``, ``concurrency``);
its statistics are rolled up from the executions instead (``rollup_stats``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import peewee

from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.definition import Definition
from shiftflow.kernel.expressions import ExpressionError, render
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.workflows import Workflow


def take_execution_slot(workflow: Workflow) -> bool:
    """Count one more execution against ``max_executions``; False when the limit is reached.

    The conditional update is atomic: two triggers racing for the last slot cannot both win.
    A workflow that reached its limit is marked COMPLETED.
    """
    if workflow.max_executions is None:
        return True
    updated = (
        Workflow.update(execution_count=Workflow.execution_count + 1, last_executed_at=utcnow())
        .where((Workflow.id == workflow.id) & (Workflow.execution_count < Workflow.max_executions))
        .execute()
    )
    if not updated:
        Workflow.update(status="COMPLETED").where(
            (Workflow.id == workflow.id) & (Workflow.status == "ACTIVE")
        ).execute()
        return False
    return True


def give_back_execution_slot(workflow: Workflow) -> None:
    """Undo ``take_execution_slot`` (the trigger turned out to be a duplicate)."""
    if workflow.max_executions is not None:
        Workflow.update(execution_count=Workflow.execution_count - 1).where(
            Workflow.id == workflow.id
        ).execute()


def concurrency_key(definition: Definition, data: dict[str, Any]) -> str | None:
    """The rendered concurrency key of a new execution; None when the workflow has no limit."""
    spec = definition.concurrency
    if spec is None:
        return None
    _, template = spec
    if not template:
        return ""
    try:
        value = render(template, {"trigger": data})
    except ExpressionError:
        return "(missing)"  # executions whose key cannot be computed share one lane
    return str(value)[:200]


def _running(execution: Execution) -> int:
    return (
        Execution.select()
        .where(
            (Execution.workflow == execution.workflow_id)
            & (Execution.concurrency_key == execution.concurrency_key)
            & (Execution.status == "RUNNING")
        )
        .count()
    )


def _lock_workflow(workflow_id: Any) -> None:
    if is_postgres():
        Workflow.select(Workflow.id).where(Workflow.id == workflow_id).for_update().execute()


def may_run_now(execution: Execution, definition: Definition) -> bool:
    """True when ``execution`` may start (its concurrency lane has room)."""
    spec = definition.concurrency
    if spec is None:
        return True
    _lock_workflow(execution.workflow_id)
    return _running(execution) < spec[0]


def next_in_lane(execution: Execution, definition: Definition) -> Execution | None:
    """The oldest execution queued PENDING in the lane ``execution`` just left, when the lane
    now has room (``definition``: the finished execution's); None otherwise. Locks the
    workflow, and the row it returns (skipping one another transaction holds)."""
    _lock_workflow(execution.workflow_id)
    if not (definition.concurrency and _running(execution) < definition.concurrency[0]):
        return None
    query = (
        Execution.select()
        .where(
            (Execution.workflow == execution.workflow_id)
            & (Execution.concurrency_key == execution.concurrency_key)
            & (Execution.status == "PENDING")
        )
        .order_by(Execution.created_at)
        .limit(1)
    )
    if is_postgres():
        query = query.for_update(skip_locked=True)
    return query.first()


def rollup_stats(since: dt.datetime) -> int:
    """Recompute the execution counters of workflows that ran since ``since``; returns how many."""
    # One probe of the (workflow_id, created_at) index per workflow: a DISTINCT over recent
    # executions would scan the whole execution table (no index leads with created_at).
    recent = Execution.select(peewee.SQL("1")).where(
        (Execution.workflow == Workflow.id) & (Execution.created_at >= since)
    )
    touched = [row.id for row in Workflow.select(Workflow.id).where(peewee.fn.EXISTS(recent))]
    for workflow_id in touched:
        counts: dict[str, int] = dict(
            Execution.select(  # type: ignore[arg-type]
                Execution.status, peewee.fn.COUNT(Execution.id)
            )
            .where(Execution.workflow == workflow_id)
            .group_by(Execution.status)
            .tuples()
        )
        last = (
            Execution.select(peewee.fn.MAX(Execution.created_at))
            .where(Execution.workflow == workflow_id)
            .scalar()
        )
        fields: dict[Any, Any] = {
            Workflow.successful_executions: counts.get("SUCCEEDED", 0),
            Workflow.failed_executions: counts.get("FAILED", 0) + counts.get("TIMED_OUT", 0),
            Workflow.last_executed_at: last,
        }
        workflow = Workflow.get_or_none(Workflow.id == workflow_id)
        if workflow is not None and workflow.max_executions is None:
            fields[Workflow.execution_count] = sum(counts.values())
        Workflow.update(fields).where(Workflow.id == workflow_id).execute()
    return len(touched)
