"""The one plan → inline → rows loop: what a step of progress decides, before anything is written.

Given the states of an execution's steps, the pure planner (``kernel.steps.plan``) says
which steps are skipped and which are ready. Ready cheap steps (conditions, switches,
transforms, stop, fail) run here at once, in memory; their outcomes may make more steps
ready, so the loop plans again until no cheap step is left to run. Ready steps that need
a worker are only marked PENDING.

Both ways an execution moves on use this loop and differ only in how they write its
outcome: ``runs.advance`` (inside the transaction that holds the execution locked: one
row per decided step) and the fast start in ``start`` (a new execution's rows in one
statement, before any transaction).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from shiftflow.kernel.definition import Definition
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.executors import run_pure
from shiftflow.kernel.steps import Plan, StepState, plan
from shiftflow.models.tables.base import utcnow


@dataclass
class Decided:
    """One step decided by ``unroll``: SKIPPED, PENDING (a worker runs it), or run inline
    (SUCCEEDED or FAILED, with its output or error and when it ran)."""

    step_id: str
    status: str
    output: Any = None
    error: str | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    @property
    def inline(self) -> bool:
        """True when the step ran here (it has an outcome, not just a plan)."""
        return self.started_at is not None


@dataclass
class Unrolled:
    """What ``unroll`` decided, in order, and the planner's last decision (finished,
    failed, stopped)."""

    steps: list[Decided]
    decision: Plan


def unroll(definition: Definition, states: dict[str, StepState], context: dict[str, Any]) -> Unrolled:
    """Plan, run the ready cheap steps, and plan again until none is left to run.

    Parameters:
        definition: the execution's pinned definition.
        states: the header steps decided so far (step id -> status and output).
        context: what ``{{ references }}`` may read, but ``steps`` (built here from the
            steps that succeeded, including those run inline).

    Returns:
        Every step decided, in the order it was decided (the order its row is written).
    """
    states = dict(states)
    decided: list[Decided] = []
    while True:
        decision = plan(definition, states)
        ran_inline = False
        for step_id in decision.skipped:
            states[step_id] = StepState("SKIPPED")
            decided.append(Decided(step_id, "SKIPPED"))
        for step_id in decision.ready:
            step = definition.step(step_id)
            if not step.inline:
                states[step_id] = StepState("PENDING")
                decided.append(Decided(step_id, "PENDING"))
                continue
            ran_inline = True
            outputs = {sid: {"output": s.output, "status": "SUCCEEDED"}
                       for sid, s in states.items() if s.status == "SUCCEEDED"}
            started = utcnow()
            try:
                output: Any = run_pure(step, {**context, "steps": outputs})
                status, error = "SUCCEEDED", None
            except PermanentError as exc:
                output, status, error = None, "FAILED", str(exc)
            states[step_id] = StepState(status, output)
            decided.append(Decided(step_id, status, output, error, started, utcnow()))
        if not ran_inline:
            return Unrolled(decided, decision)
