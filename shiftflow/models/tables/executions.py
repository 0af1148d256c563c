"""Executions and step executions: the state machine, made safe to run twice by unique keys.

(workflow, dedup_key) makes an execution unique per delivery; (execution, step_id,
iteration) makes a step unique, so a redelivered message finds its row and skips work
that already succeeded.
"""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.contracts import MAX_DEDUP_KEY
from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.tenancy import User, Workspace
from shiftflow.models.tables.workflows import Workflow


class Execution(BaseModel):
    """One run of one workflow version.

    ``status``: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT (and PAUSED, a
    paused task). The multi-phase fields (``phase``, ``progress``, ``phases``,
    ``checkpoints``, ``parent`` for the retry chain) live here too.

    The person a run was started for is ``triggered_by``. ``title`` is the display name
    of a task. LLM metrics are on ``LlmCall`` rows, one per call.

    Database check (migration 0002): RUNNING needs ``started_at``; PENDING/RUNNING/PAUSED
    have no ``completed_at``; a terminal status has one. No "completed after started"
    check here: the two stamps come from different worker hosts, and clock skew must not
    fail an execution (``LlmCall`` has that check).
    """

    # Peewee's foreign-key id accessors, declared for the type checker.
    workflow_id: Any
    workspace_id: Any
    parent_id: Any
    triggered_by_id: Any

    # Foreign keys without their own single-column index where a composite index leads with
    # the same column (every index costs each insert and each non-HOT status update).
    workflow = peewee.ForeignKeyField(Workflow, backref="executions", on_delete="CASCADE", index=False)
    workflow_version = peewee.IntegerField()
    workspace = peewee.ForeignKeyField(Workspace, backref="executions", on_delete="CASCADE", index=False)
    dedup_key = peewee.CharField(max_length=MAX_DEDUP_KEY)
    source = peewee.CharField(max_length=20, default="manual")
    status = peewee.CharField(max_length=12, default="PENDING")
    priority = peewee.CharField(max_length=10, default="NORMAL")
    trigger_data = JSONField(default=dict)
    context = JSONField(default=dict)
    result = JSONField(null=True)
    error = peewee.TextField(null=True)
    # Multi-phase executions.
    phase = peewee.CharField(max_length=20, null=True)
    progress = peewee.IntegerField(default=0)
    phases = JSONField(null=True)
    checkpoints = JSONField(null=True)
    retry_count = peewee.IntegerField(default=0)
    max_retries = peewee.IntegerField(default=3)
    retry_reason = peewee.TextField(null=True)
    # Indexed only where set (idx_execution_parent below): most executions have no parent.
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL", index=False)
    received_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    duration_ms = peewee.IntegerField(null=True)
    # Indexed where set, by idx_execution_triggered_by (triggered_by, created_at) below.
    triggered_by = peewee.ForeignKeyField(
        User, null=True, backref="executions", on_delete="SET NULL", index=False
    )
    title = peewee.CharField(max_length=300, null=True)
    #: When the execution times out (its definition's ``timeout``); the timer loop enforces it.
    deadline_at = peewee.DateTimeField(null=True)
    #: The rendered ``concurrency.key`` of the definition: executions with the same workflow
    #: and key run at most ``concurrency.limit`` at a time; the others wait PENDING.
    concurrency_key = peewee.CharField(max_length=200, null=True)
    #: For a sub-workflow: the parent step waiting for this execution's result.
    parent_step_id = peewee.CharField(max_length=100, null=True)
    parent_iteration = peewee.IntegerField(null=True)
    #: For a re-run: the first execution of its re-run lineage (the one every re-run of it,
    #: and re-run of a re-run, repeats). For a sub-workflow started again by its parent's
    #: re-run: the first child started for that parent step (``start.child_lineage_root``).
    #: NULL on an execution that is its own root. A plain id, not a foreign key: a swap's
    #: identity (``swap_lineage``) must outlive a deleted root.
    lineage_root = peewee.UUIDField(null=True)

    class Meta:
        indexes = (
            (("workflow", "dedup_key"), True),
            (("workflow", "created_at"), False),
            (("workspace", "created_at"), False),
            (("status", "created_at"), False),
        )
        constraints = [
            peewee.Check("progress BETWEEN 0 AND 100", name="chk_execution_progress"),
            peewee.Check("retry_count >= 0 AND max_retries >= 0", name="chk_execution_retries"),
            peewee.Check("duration_ms IS NULL OR duration_ms >= 0", name="chk_execution_duration"),
            # Added by migration 0002: which statuses have which times.
            peewee.Check(
                "(status IN ('PENDING', 'RUNNING', 'PAUSED') AND completed_at IS NULL"
                " AND (status <> 'RUNNING' OR started_at IS NOT NULL))"
                " OR (status IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') AND completed_at IS NOT NULL)",
                name="chk_execution_status_logic",
            ),
        ]


class StepExecution(BaseModel):
    """One step of one execution (one iteration of a ``for_each``).

    ``status``: PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELLED.
    ``attempts`` counts deliveries and is incremented before work starts, so a message
    that kills its process is quarantined after the delivery limit.
    """

    execution_id: Any

    # Indexed by the unique (execution, step_id, iteration) below, which leads with it.
    execution = peewee.ForeignKeyField(Execution, backref="steps", on_delete="CASCADE", index=False)
    step_id = peewee.CharField(max_length=100)
    iteration = peewee.IntegerField(default=0)
    step_type = peewee.CharField(max_length=30)
    status = peewee.CharField(max_length=12, default="PENDING")
    input = JSONField(null=True)
    output = JSONField(null=True)
    error = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    retry_count = peewee.IntegerField(default=0)
    #: Who holds a RUNNING step: ``<host>/<pid namespace>:<pid>:<process start>#<claim>``
    #: (``kernel.holders``), or None when nobody does (released, or orphaned and
    #: re-published). A copy of the step's message takes the step over only once its
    #: holder is provably gone (``models.engine.leases``).
    claimed_by = peewee.CharField(max_length=128, null=True)
    #: Until when the holder's claim is good: renewed by its process while it works
    #: (``models.engine.leases``). A RUNNING step whose lease ran out is re-published by the
    #: timer loop, so a step whose holder died is resumed even when no message is left.
    lease_until = peewee.DateTimeField(null=True)
    #: Durable timers: when a WAITING step resumes (a wait, or an event/approval timeout) or
    #: a PENDING step is re-published (retry backoff). The timer loop reads a partial index
    #: of the rows that have one.
    resume_at = peewee.DateTimeField(null=True)
    #: When a RUNNING step times out (its ``timeout``); the timer loop enforces it.
    timeout_at = peewee.DateTimeField(null=True)
    #: What a WAITING step waits for: an event key, an approval, a child execution.
    wait_key = peewee.CharField(max_length=300, null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    duration_ms = peewee.IntegerField(null=True)

    class Meta:
        indexes = (
            (("execution", "step_id", "iteration"), True),
        )
        constraints = [
            peewee.Check(
                "iteration >= 0 AND attempts >= 0 AND retry_count >= 0", name="chk_step_execution_counts"
            ),
        ]


# Migration 0002: the dashboard's "my running and failed executions".
Execution.add_index(
    Execution.index(
        Execution.triggered_by,
        Execution.status,
        where=peewee.SQL("status IN ('RUNNING', 'FAILED')"),
        name="idx_executions_user_status",
    )
)


# Partial indexes (migration 0005): each holds only the rows its query can match, so the
# common row (a finished execution or step without timers, waits, parent or lane) costs
# no entry in them. PostgreSQL uses a partial index when the query's conditions imply its
# WHERE (``resume_at <= now`` implies ``resume_at IS NOT NULL``).
Execution.add_index(Execution.index(Execution.parent, where=peewee.SQL("parent_id IS NOT NULL"),
                                    name="idx_execution_parent"))
Execution.add_index(Execution.index(Execution.triggered_by, Execution.created_at,
                                    where=peewee.SQL("triggered_by_id IS NOT NULL"),
                                    name="idx_execution_triggered_by"))
# The re-runs of a lineage (control.rerun: one active re-run per lineage); only re-runs have one.
Execution.add_index(Execution.index(Execution.lineage_root, where=peewee.SQL("lineage_root IS NOT NULL"),
                                    name="idx_execution_lineage"))
# Concurrency lanes count RUNNING and pick the oldest PENDING execution of a key.
Execution.add_index(Execution.index(Execution.workflow, Execution.concurrency_key, Execution.status,
                                    where=peewee.SQL("status IN ('PENDING', 'RUNNING')"),
                                    name="idx_execution_lane"))
# The cap on a workspace's queued executions (migration 0009) counts its PENDING ones.
Execution.add_index(Execution.index(Execution.workspace, where=peewee.SQL("status = 'PENDING'"),
                                    name="idx_execution_queued"))
# The timer loop's execution timeouts.
Execution.add_index(Execution.index(Execution.deadline_at,
                                    where=peewee.SQL("status IN ('RUNNING', 'PENDING') AND deadline_at IS NOT NULL"),
                                    name="idx_execution_deadline"))
StepExecution.add_index(StepExecution.index(StepExecution.wait_key, where=peewee.SQL("wait_key IS NOT NULL"),
                                            name="idx_step_execution_wait_key"))
# The timer loop's timers (migration 0017: keyed on the timer alone, so that no index of the
# table names ``status`` and a claim's update is HOT; the queries still filter the status).
StepExecution.add_index(StepExecution.index(StepExecution.resume_at, where=peewee.SQL("resume_at IS NOT NULL"),
                                            name="idx_step_execution_resume"))
StepExecution.add_index(StepExecution.index(StepExecution.timeout_at, where=peewee.SQL("timeout_at IS NOT NULL"),
                                            name="idx_step_execution_timeout"))
# The steps not final yet (migration 0017): what the lease sweep and the heartbeat read
# (``completed_at IS NULL`` in their queries). Keyed and filtered on columns a claim and a
# lease renewal never change, so those updates are HOT; an outcome sets ``completed_at``
# and the row leaves the index.
StepExecution.add_index(StepExecution.index(StepExecution.created_at, where=peewee.SQL("completed_at IS NULL"),
                                            name="idx_step_execution_open"))
