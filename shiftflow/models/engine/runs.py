"""The step loop: claim a step, record its result, advance the execution, finish it.

(Starting an execution is ``start``; the plan → inline loop ``advance`` runs is ``inline``.)

Every function here is safe to run twice for the same message: unique keys and status
checks turn a redelivery into a no-op that only re-publishes what comes next. The
callers (actors) commit first, publish second and ack last (docs/architecture.md#durability).

``advance`` is the heart: with the execution row locked it asks the pure planner what
is ready, runs cheap steps (conditions, switches, transforms, stop, fail) inline in the
same transaction (``inline.unroll``), creates PENDING rows (and messages) for the others,
and finishes the execution when nothing is left. Finishing starts what waited for it (the
next execution of its concurrency lane, its parent's step), and recording a ``for_each``
item settles its header: all here, so nothing below calls back into this module. A chain of cheap steps therefore costs one transaction
and no broker round trip, yet still leaves one row per step.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shiftflow.kernel import holders, metrics, observe
from shiftflow.kernel.contracts import (
    FOLLOW_ON_BOOST,
    Priority,
    StepPayload,
    TriggerPayload,
)
from shiftflow.kernel.db import database
from shiftflow.kernel.definition import Definition, validate
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.executors import check_inputs, check_output
from shiftflow.kernel.expressions import render
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.sizes import SizeLimitExceeded, json_size
from shiftflow.kernel.steps import TERMINAL, StepState
from shiftflow.models.engine import (
    claim_sql,
    complete_sql,
    connection_secrets,
    flow_control,
    inline,
    leases,
    lock_sql,
    mongo_log,
    prepared_sql,
)
from shiftflow.models.engine.step_events import step_finished
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.workflows import WorkflowVersion

#: Step statuses that are neither finished nor merely planned.
ACTIVE = ("PENDING", "RUNNING", "WAITING", "QUEUED")

#: Called by ``finish_execution`` in its transaction, the execution locked: (execution,
#: definition) -> messages. Modules above the step loop register here (``retries``: the
#: timeline's status change and automatic retries), so this module imports none of them.
ON_FINISH: list[Callable[[Execution, Definition], list[Outgoing]]] = []


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
    #: The claiming thread's holder token (``kernel.holders``), when it claimed the step.
    token: str = ""


@contextmanager
def transaction() -> Iterator[None]:
    """A database transaction whose log documents are written only if it commits."""
    with mongo_log.deferred(), database.atomic():
        yield


def ms_between(start: dt.datetime | None, end: dt.datetime) -> int | None:
    """Milliseconds from ``start`` to ``end`` (at least 1), or None without a start."""
    return None if start is None else max(1, int((end - start).total_seconds() * 1000))


_definitions: dict[tuple[str, int], Definition] = {}


def load_definition(workflow_id: Any, version: int) -> Definition:
    """The validated definition of one pinned workflow version (cached: versions are immutable).

    Raises:
        NotFound: no such version.
    """
    key = (str(workflow_id), int(version))
    cached = _definitions.get(key)
    if cached is not None:
        return cached
    row = WorkflowVersion.get_or_none(workflow=workflow_id, version=version)
    if row is None:
        raise NotFound(f"workflow {workflow_id} has no version {version}")
    definition = _definitions[key] = validate(row.definition)
    return definition


def message_for(execution: Execution, definition: Definition, step_id: str, iteration: int = 0, *,
                first: bool = False) -> Outgoing:
    """The message that runs one step (iteration) of ``execution``."""
    base = int(Priority.parse(execution.priority))
    # Follow-on steps of running executions go ahead of the first steps of new ones.
    priority = base if first else base + FOLLOW_ON_BOOST
    return Outgoing(definition.step(step_id).actor,
                    StepPayload(execution_id=str(execution.id), step_id=step_id, iteration=iteration),
                    priority=priority)


def lock_execution(execution_id: Any) -> Execution:
    """Load an execution with its row locked (PostgreSQL) for the rest of the transaction.

    Serialising the decisions of one execution means two steps finishing at once cannot
    both miss, or both start, a step that needs them.

    Raises:
        NotFound: no such execution.
    """
    execution = prepared_sql.get_by_id(Execution, execution_id, for_update=True)
    if execution is None:
        raise NotFound(f"execution {execution_id} does not exist")
    return execution


def _rows(execution: Execution) -> dict[str, StepExecution]:
    """The header rows (iteration 0) of every step of ``execution``, by step id."""
    rows = prepared_sql.select_where(StepExecution, execution=execution.id, iteration=0)
    return {row.step_id: row for row in rows}


def context_for(execution: Execution, definition: Definition, rows: dict[str, StepExecution],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data ``{{ references }}`` may read: trigger, earlier outputs, vars (and item/index)."""
    outputs = {sid: {"output": r.output, "status": r.status} for sid, r in rows.items() if r.status == "SUCCEEDED"}
    context = {"trigger": execution.trigger_data, "steps": outputs, "vars": definition.raw.get("vars", {}),
               "execution": {"id": str(execution.id), "workflow_id": str(execution.workflow_id)},
               "secrets": connection_secrets.UNAVAILABLE}
    if extra:
        context.update(extra)
    return context


def pending_messages(execution: Execution, definition: Definition) -> list[Outgoing]:
    """Messages for every step (iteration) that is PENDING or RUNNING: what a crash between
    commit and publish may have left unsent. Receivers drop duplicates."""
    rows = StepExecution.select(StepExecution.step_id, StepExecution.iteration).where(
        (StepExecution.execution == execution.id) & (StepExecution.status.in_(("PENDING", "RUNNING")))
        & (StepExecution.resume_at.is_null()))
    return [message_for(execution, definition, r.step_id, r.iteration) for r in rows]


def _insert(execution: Execution, step_id: str, step_type: str, status: str, iteration: int = 0,
            **fields: Any) -> StepExecution:
    """Create one step row. Only ``advance`` calls this, with the execution locked, so no
    other transaction can create the same row meanwhile: one INSERT, no read-back."""
    values = _new_row(execution, step_id, step_type, status, iteration, **fields)
    prepared_sql.insert_rows(StepExecution, [values])
    return _saved(values)


def _new_row(execution: Execution, step_id: str, step_type: str, status: str, iteration: int = 0,
             **fields: Any) -> dict[str, Any]:
    """The field values of a new step row."""
    now = utcnow()
    values = {"id": uuid.uuid4(), "execution": execution.id, "step_id": step_id, "iteration": iteration,
              "step_type": step_type, "status": status, "created_at": now, **fields}
    if status in TERMINAL:
        values.setdefault("completed_at", now)
    return values


def _saved(values: dict[str, Any]) -> StepExecution:
    """The row object of ``values``, just written."""
    row = StepExecution(**values)
    row._dirty.clear()  # type: ignore[attr-defined]  # Peewee's private dirty set: the row is saved
    return row


def advance(execution: Execution, definition: Definition, *, first: bool = False,
            rows: dict[str, StepExecution] | None = None, unrolled: inline.Unrolled | None = None) -> list[Outgoing]:
    """Plan and start what is ready; run cheap steps inline; finish when done.

    Call inside ``transaction()`` with ``execution`` locked. ``first`` marks the first
    steps of a new execution (no follow-on priority boost). ``rows``: the header rows as
    they are now, when the caller has them (``lock_sql``); else they are read.
    ``unrolled``: the plan of ``rows`` (``_plan``), when the caller made it already.
    """
    outgoing: list[Outgoing] = []
    if execution.status in TERMINAL:
        return outgoing
    rows = _rows(execution) if rows is None else rows
    unrolled = _plan(execution, definition, rows) if unrolled is None else unrolled
    for decided in unrolled.steps:
        step_id, step_type = decided.step_id, definition.step(decided.step_id).type
        if decided.inline:
            rows[step_id] = _insert(execution, step_id, step_type, decided.status, output=decided.output,
                                    error=decided.error, attempts=1, started_at=decided.started_at,
                                    duration_ms=ms_between(decided.started_at, decided.completed_at or utcnow()))
            announce_step(execution, step_id, step_type, decided.status,
                          {"inline": True, "output": decided.output, "error": decided.error,
                           "durationMs": rows[step_id].duration_ms})
            if decided.status == "FAILED":
                execution.error = f"step {step_id}: {decided.error}"
        else:
            rows[step_id] = _insert(execution, step_id, step_type, decided.status)
            if decided.status == "PENDING":
                outgoing.append(message_for(execution, definition, step_id, first=first))
    decision = unrolled.decision
    if decision.stopped:
        _cancel_active(execution, "stopped by a stop step")
    if decision.finished:
        outgoing += finish_execution(execution, definition, "FAILED" if decision.failed else "SUCCEEDED", rows)
    # A running execution's progress is not written per step (one row version and one
    # statement less per step): ``progress_of`` derives it from the step rows when read.
    return outgoing


def _plan(execution: Execution, definition: Definition, rows: dict[str, StepExecution]) -> inline.Unrolled:
    """What ``advance`` will do with the header ``rows``: the steps it decides, in order."""
    return inline.unroll(definition, {sid: StepState(r.status, r.output) for sid, r in rows.items()},
                         context_for(execution, definition, {}))


def progress_of(execution: Execution) -> int:
    """An execution's progress in percent: the stored figure once it is final (100 when it
    succeeded) or before it runs; while it runs, the share of its steps that are final
    (at most 99), from the step rows (the engine does not write it per step)."""
    if execution.status != "RUNNING":
        return int(execution.progress or 0)
    try:
        steps = len(load_definition(execution.workflow_id, execution.workflow_version).steps)
    except NotFound:
        return int(execution.progress or 0)
    done = StepExecution.select().where((StepExecution.execution == execution.id) & (StepExecution.iteration == 0)
                                        & StepExecution.status.in_(sorted(TERMINAL))).count()
    return max(int(execution.progress or 0), min(99, int(100 * done / max(1, steps))))


def _cancel_active(execution: Execution, reason: str) -> None:
    StepExecution.update(status="CANCELLED", completed_at=utcnow(), error=reason, resume_at=None).where(
        (StepExecution.execution == execution.id) & (StepExecution.status.in_(ACTIVE))).execute()


def announce_created(execution: Execution, payload: TriggerPayload) -> None:
    """Metrics and log documents of a new execution (both start paths)."""
    metrics.EXECUTIONS.labels("created").inc()
    observe.execution_event(execution.workflow_id, "created")
    mongo_log.execution_log(execution, "execution created", metadata={"source": payload.source,
                                                                  "dedupKey": payload.dedup_key})
    mongo_log.analytics_event("workflow_triggered", execution, {"source": payload.source})


def announce_step(execution: Execution, step_id: str, step_type: str, status: str,
                  metadata: dict[str, Any]) -> None:
    """Metrics and log document of a step's outcome (inline, fast start or message)."""
    metrics.STEPS.labels(step_type, status.lower()).inc()
    observe.step_event(execution.workflow_id, step_type, status.lower(), metadata.get("durationMs"))
    mongo_log.execution_log(execution, f"step {step_id} {status.lower()}", step_id=step_id,
                       level="info" if status == "SUCCEEDED" else "error", metadata=metadata)
    step_finished(execution, step_id, step_type, status, metadata)


def announce_finished(execution: Execution, step_count: int) -> None:
    """Metrics and log documents of a final execution (both finish paths)."""
    outcome = execution.status.lower()
    metrics.EXECUTIONS.labels(outcome).inc()
    if execution.received_at and execution.completed_at:
        metrics.TRIGGER_TO_DONE_SECONDS.labels(outcome).observe(
            max(0.0, (execution.completed_at - execution.received_at).total_seconds()))
    observe.execution_event(execution.workflow_id, outcome, (execution.duration_ms or 0) / 1000)
    mongo_log.execution_log(execution, f"execution {outcome}", level="info" if outcome == "succeeded" else "error",
                       metadata={"durationMs": execution.duration_ms, "error": execution.error})
    mongo_log.analytics_event("workflow_executed", execution, {"status": outcome, "duration": execution.duration_ms,
                                                          "stepCount": step_count})


def duplicate(execution: Execution) -> Started:
    """A repeated trigger: nothing new, only the steps still pending are re-published."""
    metrics.EXECUTIONS.labels("duplicate").inc()
    pinned = load_definition(execution.workflow_id, execution.workflow_version)
    return Started(execution, False, pending_messages(execution, pinned), "duplicate")


def finish_execution(execution: Execution, definition: Definition, status: str,
                     rows: dict[str, StepExecution] | None = None, *, error: str | None = None) -> list[Outgoing]:
    """Mark ``execution`` final, update workflow counters, and start what was waiting on it
    (the next queued execution of its concurrency key; its parent step). Idempotent."""
    if execution.status in TERMINAL:
        return []
    now = utcnow()
    rows = _rows(execution) if rows is None else rows
    execution.status, execution.completed_at = status, now
    execution.error = (error or execution.error) if status != "SUCCEEDED" else None
    execution.result = capped_result({sid: r.output for sid, r in rows.items() if r.status == "SUCCEEDED"})
    execution.duration_ms = ms_between(execution.started_at or execution.created_at, now)
    if status == "SUCCEEDED":
        execution.progress = 100
    prepared_sql.update_where(Execution, {"status": execution.status, "completed_at": execution.completed_at,
                                      "error": execution.error, "result": execution.result,
                                      "duration_ms": execution.duration_ms, "progress": execution.progress},
                          id=execution.id)
    if status != "SUCCEEDED":
        _cancel_active(execution, f"execution {status.lower()}")
    # Workflow counters are rolled up by the timer loop (flow_control.rollup_stats): updating the
    # workflow row here would lock it until commit and serialise the workflow's executions.
    announce_finished(execution, len(rows))
    outgoing = _after_finish(execution)
    for hook in ON_FINISH:
        outgoing += hook(execution, definition)
    return outgoing


def _after_finish(execution: Execution) -> list[Outgoing]:
    """Start what waited for ``execution``: the next queued execution of its lane, and its
    parent step if it was a sub-workflow. Runs in the finishing transaction."""
    outgoing: list[Outgoing] = []
    if execution.concurrency_key is not None:
        definition = load_definition(execution.workflow_id, execution.workflow_version)
        waiting = flow_control.next_in_lane(execution, definition)
        if waiting is not None:
            waiting_def = load_definition(waiting.workflow_id, waiting.workflow_version)
            mongo_log.execution_log(waiting, "execution dequeued: a concurrency slot freed up")
            outgoing += begin_running(waiting, waiting_def)
    if execution.parent_id and execution.parent_step_id:
        outgoing += _resume_parent(execution)
    return outgoing


def _resume_parent(child: Execution) -> list[Outgoing]:
    """Record a finished sub-workflow execution as the outcome of its parent's step."""
    parent = lock_execution(child.parent_id)
    definition = load_definition(parent.workflow_id, parent.workflow_version)
    step = StepExecution.get_or_none(
        (StepExecution.execution == parent.id)
        & (StepExecution.step_id == child.parent_step_id)
        & (StepExecution.iteration == (child.parent_iteration or 0))
    )
    if step is None:
        return []
    if child.status == "SUCCEEDED":
        return record_step(
            parent,
            definition,
            step,
            "SUCCEEDED",
            from_status=("WAITING", "RUNNING"),  # RUNNING: a cheap child can finish before the parent parks
            output={"execution_id": str(child.id), "result": child.result},
        )
    return record_step(
        parent,
        definition,
        step,
        "FAILED",
        from_status=("WAITING",),
        error=f"sub-workflow execution {child.id} {child.status.lower()}: {child.error}",
    )


def capped_result(result: dict[str, Any]) -> dict[str, Any]:
    """An execution's result (every step's output), or a note in its place when together
    they pass ``SHIFTFLOW_STEP_MAX_OUTPUT_BYTES``: each output is capped, their sum over up
    to 500 steps is not, and the steps keep their outputs."""
    limit = get_settings().step_max_output_bytes
    if json_size(result, limit) <= limit:
        return result
    return {"truncated": f"the outputs of {len(result)} steps are larger than {limit} bytes together "
                         "(the cap SHIFTFLOW_STEP_MAX_OUTPUT_BYTES); each step's output is on its step"}


def record_step(execution: Execution, definition: Definition, step: StepExecution, status: str, *,
                output: Any = None, error: str | None = None, from_status: tuple[str, ...] = ("RUNNING",),
                stored_input: Any = None, headers: dict[str, StepExecution] | None = None) -> list[Outgoing]:
    """Record a step's outcome and advance the execution. Call in ``transaction()`` with
    ``execution`` locked. A step no longer in ``from_status`` (a duplicate finished first,
    the execution was cancelled) is left alone. ``headers``: the header rows read with the
    lock (``lock_sql.lock_with_headers``), so planning does not read them again."""
    now = utcnow()
    if status == "SUCCEEDED" and output is not None:
        try:
            check_output(output, get_settings())
        except SizeLimitExceeded as exc:
            status, output, error = "FAILED", None, str(exc)
    fields: dict[Any, Any] = {"status": status, "output": output, "error": error, "completed_at": now,
                              "resume_at": None, "timeout_at": None,
                              "duration_ms": ms_between(step.started_at or step.created_at, now)}
    if stored_input is not None:
        fields["input"] = masked(stored_input)
    unrolled = None
    if headers is not None and step.iteration == 0 and execution.status not in TERMINAL:
        # The row as it is about to be written: the planner must see this step final. (If
        # the update finds the step moved on, nothing below reads ``headers``.)
        row = headers.get(step.step_id) or step
        for name, value in fields.items():
            setattr(row, name, value)
        row._dirty.clear()  # type: ignore[attr-defined]  # Peewee's private dirty set: the row is saved
        headers[step.step_id] = row
        unrolled = _plan(execution, definition, headers)
        nxt = _the_one_next(unrolled)
        if nxt is not None:
            # A linear chain: this step's outcome and the next step's row in one statement.
            values = _new_row(execution, nxt.step_id, definition.step(nxt.step_id).type, nxt.status)
            written = complete_sql.complete_and_insert(step.id, fields, status_in=from_status, row=values)
            if written is not None:
                if not written:
                    return pending_messages(execution, definition)
                _announce_outcome(execution, step, status, output, error, fields)
                headers[nxt.step_id] = _saved(values)
                return [message_for(execution, definition, nxt.step_id)]
    updated = prepared_sql.update_where(StepExecution, fields, status_in=from_status, id=step.id)
    if not updated:
        return pending_messages(execution, definition)
    _announce_outcome(execution, step, status, output, error, fields)
    if step.iteration > 0:
        return _item_finished(execution, definition, step)
    return advance(execution, definition, rows=headers, unrolled=unrolled)


def _the_one_next(unrolled: inline.Unrolled) -> inline.Decided | None:
    """The step a plan makes ready when it is exactly one step for a worker and nothing else
    (nothing inline, skipped, stopped or finished): the case ``complete_sql`` writes in one
    statement. None otherwise."""
    if len(unrolled.steps) != 1 or unrolled.decision.stopped or unrolled.decision.finished:
        return None
    decided = unrolled.steps[0]
    return decided if decided.status == "PENDING" else None


def _announce_outcome(execution: Execution, step: StepExecution, status: str, output: Any, error: str | None,
                      fields: dict[Any, Any]) -> None:
    """The outcome's metrics, document and live update; a failure's reason on the execution."""
    announce_step(execution, step.step_id, step.step_type, status,
                  {"iteration": step.iteration, "output": output, "error": error,
                   "durationMs": fields["duration_ms"] or 0, "attempt": step.attempts,
                   "startedAt": step.started_at.isoformat() if step.started_at else None})
    if status in ("FAILED", "TIMED_OUT") and not execution.error:
        execution.error = f"step {step.step_id}: {error}"


def _item_finished(execution: Execution, definition: Definition, item: StepExecution) -> list[Outgoing]:
    """After a ``for_each`` item finished: promote the next queued item, or settle the header
    (``for_each``: the first failed item fails it; all succeeded, it succeeds with their outputs)."""
    header = StepExecution.get((StepExecution.execution == execution.id) & (StepExecution.step_id == item.step_id)
                               & (StepExecution.iteration == 0))
    siblings: list[StepExecution] = list(StepExecution.select().where(
        (StepExecution.execution == execution.id) & (StepExecution.step_id == item.step_id)
        & (StepExecution.iteration > 0)).order_by(StepExecution.iteration))
    failed = [s for s in siblings if s.status in ("FAILED", "TIMED_OUT")]
    if failed:
        first = failed[0]
        return record_step(execution, definition, header, "FAILED", from_status=("WAITING",),
                           error=f"item {first.iteration - 1} failed: {first.error}")
    if all(s.status == "SUCCEEDED" for s in siblings):
        return record_step(execution, definition, header, "SUCCEEDED", from_status=("WAITING",),
                           output=[s.output for s in siblings])
    queued = [s for s in siblings if s.status == "QUEUED"]
    if not queued:
        return []
    nxt = queued[0]
    StepExecution.update(status="PENDING").where((StepExecution.id == nxt.id)
                                                 & (StepExecution.status == "QUEUED")).execute()
    return [message_for(execution, definition, nxt.step_id, nxt.iteration)]


def begin_running(execution: Execution, definition: Definition) -> list[Outgoing]:
    """Move a PENDING execution to RUNNING and start its first steps (in a transaction)."""
    now = utcnow()
    execution.status, execution.started_at = "RUNNING", now
    if definition.timeout:
        execution.deadline_at = now + dt.timedelta(seconds=definition.timeout)
    execution.save(only=[Execution.status, Execution.started_at, Execution.deadline_at])
    return advance(execution, definition, first=True)


def claim_step(payload: StepPayload, *, delivery_limit: int, token: str | None = None) -> Claim:
    """Count this delivery and mark the step RUNNING, unless it is finished or held elsewhere.

    The attempt count is committed before any work, so a message that kills its
    process is quarantined after ``delivery_limit`` deliveries instead of looping.

    ``token`` identifies the claiming thread (``kernel.holders``; the caller holds it
    while it works). A RUNNING step is taken over only when its holder is provably gone
    (``leases.holder_gone``): any other copy of its message, whatever its message id, is
    dropped while the holder lives. Without a token the claim is held by nobody (as if
    its thread died at once).
    """
    token = token or holders.new_token()
    now = utcnow()
    # The plain case (PENDING, due, within the delivery limit, execution live) in one
    # statement without the execution lock (``claim_sql``); every other case below.
    claimed = claim_sql.claim_pending(payload.execution_id, payload.step_id, payload.iteration, token=token,
                                      lease_until=leases.lease_from(now), now=now, delivery_limit=delivery_limit)
    if claimed is not None:
        return Claim(claimed[0], claimed[1],
                     load_definition(claimed[1].workflow_id, claimed[1].workflow_version), token=token)
    with transaction():
        execution = lock_execution(payload.execution_id)
        definition = load_definition(execution.workflow_id, execution.workflow_version)
        found = prepared_sql.select_where(StepExecution, execution=execution.id, step_id=payload.step_id,
                                      iteration=payload.iteration)
        step = found[0] if found else None
        if step is None:
            raise NotFound(f"execution {execution.id} has no step {payload.step_id!r}#{payload.iteration}")
        if step.status in TERMINAL or step.status in ("WAITING", "QUEUED") or step.resume_at is not None:
            # Finished, waiting, or backing off: a redelivery only re-publishes what follows.
            metrics.STEPS.labels(step.step_type, "already_done").inc()
            return Claim(None, execution, definition, pending_messages(execution, definition), step.status.lower())
        now = utcnow()
        if step.status == "RUNNING" and not leases.holder_gone(step, now):
            # A copy while its holder lives: the holder records the outcome and publishes
            # what follows; should it die first, its lease runs out and the timer loop
            # re-publishes the step.
            metrics.STEPS.labels(step.step_type, "held").inc()
            return Claim(None, execution, definition, [], "held by a live holder")
        if execution.status in TERMINAL:
            step.status, step.completed_at = "CANCELLED", now
            step.save()
            return Claim(None, execution, definition, [], f"execution is {execution.status}")
        if execution.status == "PAUSED":
            # Nothing of a paused execution runs: the step stays as it is; resuming re-publishes it.
            return Claim(None, execution, definition, [], "execution is PAUSED")
        step.attempts += 1
        # Deliveries that ended without a recorded outcome (a crash, a kill) are the
        # attempts not explained by recorded retries.
        unexplained = step.attempts - step.retry_count
        if unexplained > delivery_limit:
            reason = f"quarantined: delivered {unexplained} times without finishing (limit {delivery_limit})"
            step.save()
            metrics.STEPS.labels(step.step_type, "quarantined").inc()
            outgoing = record_step(execution, definition, step, "FAILED", error=reason, from_status=("PENDING",
                                                                                                     "RUNNING"))
            return Claim(None, execution, definition, outgoing, reason)
        step.status, step.claimed_by, step.lease_until = "RUNNING", token, leases.lease_from(now)
        step.started_at = step.started_at or now
        # The holder keeps its own deadline (its call's timeout; ``leases``): no timer-loop timeout.
        step.timeout_at = None
        prepared_sql.update_where(StepExecution, {"status": step.status, "claimed_by": step.claimed_by,
                                              "lease_until": step.lease_until, "started_at": step.started_at,
                                              "timeout_at": None, "attempts": step.attempts}, id=step.id)
        # No "step started" document: the outcome's document carries the attempt and the
        # start (one document per step outcome; the row says RUNNING meanwhile).
    return Claim(step, execution, definition, token=token)


def orphaned(payload: StepPayload) -> bool:
    """True when the step of ``payload`` is RUNNING and its holder is provably gone (its
    last delivery died mid-work)."""
    found = prepared_sql.select_where(StepExecution, execution=payload.execution_id, step_id=payload.step_id,
                                  iteration=payload.iteration, status="RUNNING")
    return bool(found) and leases.holder_gone(found[0])


def complete_step(claim: Claim, output: Any, stored_input: Any = None) -> list[Outgoing]:
    """Record a step's output (and its inputs, secrets masked), plan what follows, and
    return the messages to publish."""
    assert claim.step is not None
    with transaction():
        execution, headers = lock_sql.lock_with_headers(claim.execution.id)
        return record_step(execution, claim.definition, claim.step, "SUCCEEDED", output=output,
                           stored_input=stored_input, headers=headers)


def fail_step(claim: Claim, error: str, *, status: str = "FAILED", stored_input: Any = None) -> list[Outgoing]:
    """Record a permanent failure of a step; the execution fails with it."""
    assert claim.step is not None
    with transaction():
        execution, headers = lock_sql.lock_with_headers(claim.execution.id)
        return record_step(execution, claim.definition, claim.step, status, error=error, stored_input=stored_input,
                           headers=headers)


def retry_later(claim: Claim, error: str, delay_seconds: float) -> None:
    """Park a step PENDING with a durable timer; the timer loop re-publishes it.

    Unlike a Dramatiq retry, nothing is held unacknowledged in RabbitMQ while waiting,
    so a backoff longer than the broker's consumer timeout is safe.
    """
    assert claim.step is not None
    resume = utcnow() + dt.timedelta(seconds=delay_seconds)
    with transaction():
        StepExecution.update(status="PENDING", claimed_by=None, resume_at=resume, timeout_at=None, error=error,
                             retry_count=StepExecution.retry_count + 1).where(
            (StepExecution.id == claim.step.id) & (StepExecution.status == "RUNNING")).execute()
        observe.STEP_RETRIES.labels(claim.step.step_type).inc()
        mongo_log.execution_log(claim.execution, f"step {claim.step.step_id} will retry in {delay_seconds:.1f} s",
                           level="warn", step_id=claim.step.step_id, metadata={"error": error})


@dataclass(frozen=True)
class Rendered:
    """A claimed step's inputs: ``call`` for the call, ``stored`` with secrets masked, and
    ``scrub``, which hides the used secrets' values in what comes back (output, errors)."""

    call: Any
    stored: Any
    scrub: Any = field(default=lambda value: value)


def render_inputs(claim: Claim, extra: dict[str, Any] | None = None) -> Rendered:
    """Render the claimed step's inputs (see ``Rendered``).

    Secrets (``{{ secrets.<connection>.<field> }}``) reach only the call of a step type
    allowed them (``http``); the stored input, the logs and the outputs see ``***``.
    Any other step's reference to them fails (``connection_secrets.UNAVAILABLE``): it would store
    the value.
    """
    assert claim.step is not None
    step = claim.definition.step(claim.step.step_id)
    # The other steps' outputs are read only when the inputs may refer to them.
    rows = _rows(claim.execution) if reads_steps(step.inputs) else {}
    context = context_for(claim.execution, claim.definition, rows, extra)
    settings = get_settings()
    if not (connection_secrets.allowed(step.type) and connection_secrets.referenced(step.inputs)):
        inputs = render(step.inputs, context)
        check_inputs(inputs, settings)
        return Rendered(inputs, inputs)
    used = connection_secrets.for_workspace(claim.execution.workspace_id)
    real = render(step.inputs, {**context, "secrets": used})
    check_inputs(real, settings)
    stored = render(step.inputs, {**context, "secrets": connection_secrets.MASKED})
    return Rendered(real, stored, connection_secrets.scrubber(used))


def reads_steps(inputs: Any) -> bool:
    """True when ``inputs`` may refer to other steps' outputs (``steps`` appears anywhere in
    them: a reference, or text that merely looks like one; either way they are read)."""
    if isinstance(inputs, str):
        return "steps" in inputs
    if isinstance(inputs, dict):
        return any(reads_steps(k) or reads_steps(v) for k, v in inputs.items())
    if isinstance(inputs, list | tuple):
        return any(reads_steps(v) for v in inputs)
    return False


def masked(inputs: Any) -> Any:
    """``inputs`` with secret-looking keys hidden, for storage."""
    return mongo_log.redact(inputs)


