"""Automatic retries of failed executions, as linked child executions.

A workflow whose definition has ``retries`` (``{max, backoff, max_backoff}``; ``max``
defaults to 10) is tried again when an execution of it fails or times out: a new *child*
execution (``parent`` = the failed one, ``retry_count`` one more, ``retry_reason`` its
error) with the same trigger data. The chain's budget is read from the execution row
(``max_retries``), fixed from the definition when its first execution fails, and the child
inherits it and its parent's checkpoints (a retried task resumes where its parent stopped).

The child is created in the same transaction that recorded the failure, so a crash can
neither lose the retry nor start two; its dedup key (``retry:<failed id>``) makes a
repeated finish a no-op. The exponential backoff is a durable timer: the child's first
steps are parked PENDING with ``resume_at``, which the timer loop re-publishes when due.
Nothing holds a worker or a message meanwhile.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.definition import Definition
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.models.engine import mongo_log, runs, timeline
from shiftflow.models.engine.start import start_execution
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.patterns import PatternRun

#: What ``retries`` means when the definition leaves a field out.
DEFAULT_MAX = 10
DEFAULT_BACKOFF = 5.0
DEFAULT_MAX_BACKOFF = 3600.0
#: Statuses that are retried (a cancel is a person's decision, not a failure).
RETRIED = ("FAILED", "TIMED_OUT")


def policy(definition: Definition) -> dict[str, float] | None:
    """``{max, backoff, max_backoff}`` of a workflow that retries its executions, else None."""
    raw = definition.raw.get("retries")
    if not isinstance(raw, dict):
        return None
    return {"max": int(raw.get("max", DEFAULT_MAX)), "backoff": float(raw.get("backoff", DEFAULT_BACKOFF)),
            "max_backoff": float(raw.get("max_backoff", DEFAULT_MAX_BACKOFF))}


def backoff_seconds(retry_number: int, backoff: float, max_backoff: float) -> float:
    """The wait before retry number ``retry_number`` (1-based): doubling, capped."""
    return min(max_backoff, backoff * 2 ** (retry_number - 1))


def chain_root(execution: Execution) -> Any:
    """The first execution of ``execution``'s retry chain."""
    current = execution
    for _ in range(200):  # a chain is at most max_retries (<= 100) long
        if not current.parent_id or current.parent_step_id or current.retry_count == 0:
            return current.id
        parent = Execution.get_or_none(Execution.id == current.parent_id)
        if parent is None:
            return current.id
        current = parent
    return current.id


def after_finish(execution: Execution, definition: Definition) -> list[Outgoing]:
    """Called by ``runs.finish_execution`` (in its transaction, the execution locked).

    Adds the status change to the timeline of executions that have one, and starts the
    next retry of a failed execution whose workflow retries. Returns no messages: the
    retry's first steps wait for their timer.
    """
    if not wants_timeline(definition):
        return []
    timeline.emit(execution, "status_changed", {"status": execution.status, "error": execution.error})
    rules = policy(definition)
    if rules is None or execution.status not in RETRIED or execution.parent_step_id:
        return []
    if execution.retry_count == 0 and execution.max_retries != rules["max"]:
        # The chain's budget is fixed by its first execution: later versions of the
        # definition do not change a chain already running.
        execution.max_retries = int(rules["max"])
        Execution.update(max_retries=execution.max_retries).where(Execution.id == execution.id).execute()
    if execution.retry_count >= execution.max_retries:
        timeline.emit(execution, "failed", {"error": f"gave up after {execution.retry_count} retries: "
                                                     f"{execution.error or execution.status}"[:4000]})
        return []
    number = execution.retry_count + 1
    delay = backoff_seconds(number, rules["backoff"], rules["max_backoff"])
    reason = (execution.error or execution.status)[:2000]
    started = start_execution(TriggerPayload(
        workflow_id=str(execution.workflow_id), dedup_key=f"retry:{execution.id}", source="retry",
        data=execution.trigger_data or {}, priority=execution.priority, parent_execution_id=str(execution.id),
        triggered_by=str(execution.triggered_by_id) if execution.triggered_by_id else ""))
    child = started.execution
    if child is None or not started.created:
        return []
    resume = utcnow() + dt.timedelta(seconds=delay)
    Execution.update(retry_count=number, max_retries=execution.max_retries, retry_reason=reason,
                     checkpoints=execution.checkpoints, lineage_root=None).where(Execution.id == child.id).execute()
    # The durable backoff: the first steps wait for the timer loop; their messages are dropped.
    StepExecution.update(resume_at=resume).where((StepExecution.execution == child.id)
                                                 & (StepExecution.status == "PENDING")).execute()
    run = PatternRun.get_or_none(PatternRun.execution == execution.id)
    if run is not None:
        PatternRun.create(workspace=run.workspace_id, pattern=run.pattern_id, execution=child.id,
                          feedback_ids=run.feedback_ids, prompt_file=run.prompt_file)
        timeline.forget_pattern(child.id)
    timeline.emit(execution, "retry_scheduled", {"child_execution_id": str(child.id), "retry_count": number,
                                                 "max_retries": execution.max_retries, "delay_seconds": delay,
                                                 "reason": reason})
    mongo_log.execution_log(execution, f"retry {number} of {execution.max_retries} starts in {delay:g} s",
                            level="warn", metadata={"child": str(child.id)})
    return []


#: Step types whose executions keep a timeline.
TIMELINE_STEP_TYPES = frozenset({"task", "deploy", "approval"})


def wants_timeline(definition: Definition) -> bool:
    """True for a workflow that keeps a timeline: it retries, or has task, deploy or approval steps."""
    return "retries" in definition.raw or any(s.type in TIMELINE_STEP_TYPES for s in definition.steps)


def chain(execution: Execution) -> list[Execution]:
    """Every execution of ``execution``'s retry chain, first to last."""
    root = Execution.get_by_id(chain_root(execution))
    found = [root]
    while len(found) <= 200:
        nxt = (Execution.select().where((Execution.parent == found[-1].id) & (Execution.source == "retry"))
               .order_by(Execution.created_at).first())
        if nxt is None:
            break
        found.append(nxt)
    return found


# Registered once, by importing this module (``run_step`` and ``waits`` do: every process
# that finishes executions imports one of them).
if after_finish not in runs.ON_FINISH:
    runs.ON_FINISH.append(after_finish)
