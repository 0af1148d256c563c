"""LLM calls: what one prompt run cost and returned.

Why a table of its own and not columns on ``Execution``: most executions make no LLM
call (swaps, tool runs), and one execution may make several (two prompt steps, a
retried call). A row per call attempt keeps cost and token accounting exact, and a
prompt run is an ``Execution`` plus its ``LlmCall``.
"""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.prompts import Prompt, PromptVersion
from shiftflow.models.tables.tenancy import Workspace


class LlmCall(BaseModel):
    """One attempt of one LLM call, with its inputs, raw and validated output, and cost.

    ``inputs`` are the template variables; ``output`` the raw model text;
    ``validated_output`` the structured result after ``PromptValidation`` checks, whose
    outcome is ``validation_status`` (PENDING, PASSED, FAILED, SKIPPED). ``token_usage``
    is ``{"input": n, "output": n, "total": n, "model": ...}``. ``cost_usd`` is NUMERIC(10,6).
    Status and priority of the run as a whole are the execution's.
    """

    # Foreign-key ids peewee adds (declared for the type checker).
    workspace_id: Any
    execution_id: Any
    step_execution_id: Any
    prompt_id: Any
    prompt_version_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="llm_calls", on_delete="CASCADE", index=False)
    execution = peewee.ForeignKeyField(Execution, backref="llm_calls", on_delete="CASCADE")
    step_execution = peewee.ForeignKeyField(
        StepExecution, null=True, backref="llm_calls", on_delete="CASCADE", index=False
    )
    attempt = peewee.IntegerField(default=1)
    # Prompts are archived, not deleted, while runs refer to them (no cascade on purpose).
    prompt = peewee.ForeignKeyField(Prompt, null=True, backref="llm_calls", index=False)
    prompt_version = peewee.ForeignKeyField(PromptVersion, null=True, backref="llm_calls")
    provider = peewee.CharField(max_length=50, null=True)
    model = peewee.CharField(max_length=100, null=True)
    # The provider-side id of the call.
    provider_call_id = peewee.CharField(max_length=200, null=True)
    status = peewee.CharField(max_length=10, default="PENDING")
    inputs = JSONField(default=dict)
    output = peewee.TextField(null=True)
    validated_output = JSONField(null=True)
    validation_status = peewee.CharField(max_length=8, default="PENDING")
    validation_errors = JSONField(null=True)
    token_usage = JSONField(null=True)
    latency_ms = peewee.IntegerField(null=True)
    cost_usd = peewee.DecimalField(max_digits=10, decimal_places=6, null=True)
    error = peewee.TextField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    # Migration 0014. ``call_key`` names the call within its step (a redelivered step finds
    # the answer it already paid for under the same key); ``cost_estimate_usd`` is the most
    # the call may cost, reserved against the daily budget until the real cost is known
    # (and kept counted when it never is: a timeout, a worker that died mid-call);
    # ``response`` is the whole answer (tool calls, parsed JSON, stop reason, ids).
    call_key = peewee.CharField(max_length=100, null=True)
    cost_estimate_usd = peewee.DecimalField(max_digits=10, decimal_places=6, null=True)
    response = JSONField(null=True)

    class Meta:
        indexes = (
            (("step_execution", "attempt"), True),
            (("workspace", "created_at"), False),
            (("prompt", "created_at"), False),
        )
        constraints = [
            peewee.Check(
                "status IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED')", name="chk_llm_call_status"
            ),
            peewee.Check(
                "validation_status IN ('PENDING', 'PASSED', 'FAILED', 'SKIPPED')",
                name="chk_llm_call_validation_status",
            ),
            peewee.Check("attempt >= 1", name="chk_llm_call_attempt"),
            # Added by migration 0002: cost not negative, latency positive, completion after start.
            # One worker stamps both times of a call, so clock skew cannot break the order.
            peewee.Check("cost_usd IS NULL OR cost_usd >= 0", name="chk_llm_call_cost_positive"),
            peewee.Check("cost_estimate_usd IS NULL OR cost_estimate_usd >= 0", name="chk_llm_call_estimate_positive"),
            peewee.Check("latency_ms IS NULL OR latency_ms > 0", name="chk_llm_call_latency_positive"),
            peewee.Check(
                "completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at",
                name="chk_llm_call_completion_order",
            ),
        ]
