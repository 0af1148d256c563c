"""``for_each``: run a step once per item, at most ``concurrency`` at a time.

The step's header row (iteration 0) expands into item rows (iterations 1..n): the first
``concurrency`` PENDING with a message each, the rest QUEUED. Each finished item
promotes the next queued one. When every item succeeded the header succeeds with the
list of item outputs, in order; the first failed item fails the header (and so the
execution, which cancels the items still queued or pending).

Expanding is here; settling a finished item is part of recording it (``runs.record_step``),
so the step loop never calls back up into this module.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.expressions import render
from shiftflow.models.engine import runs
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution

#: The most items one ``for_each`` may expand into.
MAX_ITEMS = 10_000


class ForEachError(PermanentError):
    """Raised when ``for_each`` does not render to a list, or to too long a list."""


def expand(claim: runs.Claim) -> list[Outgoing]:
    """Expand a claimed ``for_each`` header into its item rows; return their first messages."""
    assert claim.step is not None
    step = claim.definition.step(claim.step.step_id)
    with runs.transaction():
        execution = runs.lock_execution(claim.execution.id)
        header = StepExecution.get_by_id(claim.step.id)
        if header.status != "RUNNING":
            return runs.pending_messages(execution, claim.definition)
        context = runs.context_for(execution, claim.definition, _header_rows(execution))
        items = render(step.for_each, context) if isinstance(step.for_each, str) else step.for_each
        if not isinstance(items, list):
            return runs.record_step(execution, claim.definition, header, "FAILED",
                                    error=f"for_each rendered a {type(items).__name__}, expected a list")
        if len(items) > MAX_ITEMS:
            return runs.record_step(execution, claim.definition, header, "FAILED",
                                    error=f"for_each has {len(items)} items, more than {MAX_ITEMS}")
        if not items:
            return runs.record_step(execution, claim.definition, header, "SUCCEEDED", output=[])
        now = utcnow()
        rows = [{"execution": execution.id, "step_id": step.id, "iteration": i + 1, "step_type": step.type,
                 "status": "PENDING" if i < step.concurrency else "QUEUED", "input": {"item": item},
                 "created_at": now, "id": runs.uuid.uuid4()}
                for i, item in enumerate(items)]
        for start in range(0, len(rows), 500):
            StepExecution.insert_many(rows[start:start + 500]).on_conflict_ignore().execute()
        StepExecution.update(status="WAITING", wait_key=f"for_each:{execution.id}:{step.id}", output=None).where(
            StepExecution.id == header.id).execute()
        return [runs.message_for(execution, claim.definition, step.id, i + 1)
                for i in range(min(len(items), step.concurrency))]


def _header_rows(execution: Execution) -> dict[str, StepExecution]:
    rows = StepExecution.select().where((StepExecution.execution == execution.id) & (StepExecution.iteration == 0))
    return {row.step_id: row for row in rows}


def item_context(step: StepExecution) -> dict[str, Any]:
    """``item`` and ``index`` for rendering one item's inputs."""
    stored = step.input or {}
    return {"item": stored.get("item"), "index": step.iteration - 1}
