"""What a running step may tell the engine: progress, phase, checkpoints (``StepContext``).

A long step handler (a ``task`` step's function, the ``deploy`` step) gets a
``StepContext``. ``report`` sets the execution's phase and progress; ``checkpoint`` stores
a small JSON state; ``last_checkpoint`` reads it back. Each call commits at once, so a
worker killed mid-step loses nothing it reported: the next delivery of the step (or a retry
of the execution, which inherits its parent's checkpoints) starts from the last checkpoint
instead of from the beginning.

Storage: ``execution.checkpoints`` (``{step key: {"number", "phase", "state", "at"}}``),
``execution.phase``/``progress``, and ``execution.phases`` (each phase entered, with when).
The writes take the execution's row lock, like every other decision about it, so they
never interleave with a step being recorded.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.phases import PHASES, check_phase, check_progress, check_state
from shiftflow.models.engine import leases, runs, timeline
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution


def step_key(step_id: str, iteration: int = 0) -> str:
    """The key of one step (iteration) in ``execution.checkpoints``."""
    return step_id if iteration == 0 else f"{step_id}#{iteration}"


class StepContext:
    """The running step's window on its execution: progress, phase and checkpoints.

    Parameters:
        claim: the step's claim (``runs.claim_step``).
    """

    def __init__(self, claim: runs.Claim) -> None:
        assert claim.step is not None
        self.claim = claim
        self.execution_id = claim.execution.id
        self.step_id: str = claim.step.step_id
        self.iteration: int = claim.step.iteration
        #: This delivery of the step (1 on the first).
        self.attempt: int = claim.step.attempts
        #: How many earlier executions of this retry chain failed (0 on the first).
        self.retry_count: int = claim.execution.retry_count or 0
        self.key = step_key(self.step_id, self.iteration)
        self.phase: str | None = claim.execution.phase

    def report(self, *, progress: Any = None, phase: Any = None, message: str | None = None) -> None:
        """Set the execution's progress (0-100) and/or phase; committed before it returns.

        Raises:
            PhaseError: a phase not in ``PHASES``, or progress outside 0-100 (nothing is written).
        """
        checked_phase = check_phase(phase) if phase is not None else None
        checked_progress = check_progress(progress) if progress is not None else None
        if checked_phase is None and checked_progress is None:
            return

        def write() -> None:
            with runs.transaction():
                execution = runs.lock_execution(self.execution_id)
                fields: dict[Any, Any] = {}
                if checked_progress is not None:
                    fields[Execution.progress] = checked_progress
                changed = checked_phase is not None and checked_phase != execution.phase
                if changed:
                    phases = list(execution.phases or [])
                    phases.append({"phase": checked_phase, "started_at": utcnow().isoformat() + "Z",
                                   "step_id": self.step_id})
                    fields[Execution.phase], fields[Execution.phases] = checked_phase, phases
                if fields:
                    Execution.update(fields).where(Execution.id == execution.id).execute()
                data: dict[str, Any] = {"step_id": self.step_id}
                if checked_progress is not None:
                    data["progress"] = checked_progress
                if message:
                    data["message"] = message[:2000]
                if changed:
                    timeline.emit(execution, "phase_update", {"phase": checked_phase, **data}, author_type="agent")
                else:
                    if self.phase is not None:
                        data["phase"] = self.phase
                    timeline.emit(execution, "progress", {"progress": checked_progress or 0, **data},
                                  author_type="agent")

        leases.until_stored(f"step {self.step_id}: report progress", write)
        if checked_phase is not None:
            self.phase = checked_phase

    def checkpoint(self, state: Any, *, phase: Any = None) -> int:
        """Store ``state`` as this step's checkpoint (committed before it returns).

        Returns:
            The checkpoint's number (1 for the step's first).

        Raises:
            PhaseError: ``state`` is not a JSON object of at most 64 KiB, or a bad phase.
        """
        checked = check_state(state)
        checked_phase = check_phase(phase) if phase is not None else self.phase

        def write() -> int:
            with runs.transaction():
                execution = runs.lock_execution(self.execution_id)
                saved = dict(execution.checkpoints or {})
                number = int((saved.get(self.key) or {}).get("number", 0)) + 1
                saved[self.key] = {"number": number, "phase": checked_phase, "state": checked,
                                   "at": utcnow().isoformat() + "Z"}
                Execution.update({Execution.checkpoints: saved}).where(Execution.id == execution.id).execute()
                data: dict[str, Any] = {"step_id": self.step_id, "number": number, "keys": sorted(checked)[:50]}
                if checked_phase in PHASES:
                    data["phase"] = checked_phase
                timeline.emit(execution, "checkpoint", data, author_type="agent")
                return number

        return leases.until_stored(f"step {self.step_id}: store a checkpoint", write)

    def last_checkpoint(self) -> dict[str, Any] | None:
        """The state of this step's last checkpoint (or its retry parent's), None without one."""
        execution = Execution.get_by_id(self.execution_id)
        saved = (execution.checkpoints or {}).get(self.key)
        return dict(saved["state"]) if saved else None

    def emit(self, event_type: str, data: dict[str, Any], *, title: str | None = None) -> None:
        """Add a typed event to the execution's timeline (committed at once)."""
        def write() -> None:
            with runs.transaction():
                execution = Execution.get_by_id(self.execution_id)
                timeline.emit(execution, event_type, data, author_type="agent", title=title)

        leases.until_stored(f"step {self.step_id}: add a timeline event", write)
