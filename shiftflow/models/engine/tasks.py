"""The ``task`` step: run a registered Python function with a ``StepContext``.

``with: {task: <name>, ...}`` names the function (``register_task``); the rest of ``with``
is its input. The function reports progress, phases and checkpoints through the context
(``models.engine.checkpoints``) and returns the step's output. It raises
``PermanentError`` to fail the step, ``TransientError`` to have it retried (the step's
``retry`` policy, with a durable timer). Run again after a crash, it finds its last
checkpoint with ``ctx.last_checkpoint()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError
from shiftflow.models.engine import runs, timeline
from shiftflow.models.engine.checkpoints import StepContext

Task = Callable[[StepContext, dict[str, Any]], Any]

#: Task name -> function.
TASKS: dict[str, Task] = {}


class TaskError(PermanentError):
    """Raised when a task step names no task, or one that is not registered."""


def register_task(name: str, fn: Task) -> None:
    """Make ``fn`` runnable as ``type: task`` with ``with: {task: name}``."""
    TASKS[name] = fn


def run_task_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """The ``task`` step type's handler (``run_step.register_handler``).

    Raises:
        TaskError: no ``task`` input, or an unknown task name.
    """
    assert claim.step is not None
    name = inputs.get("task") if isinstance(inputs, dict) else None
    if not isinstance(name, str) or not name:
        raise TaskError("with.task: a task step names the task it runs")
    fn = TASKS.get(name)
    if fn is None:
        raise TaskError(f"with.task: {name!r} is not a registered task (known: {', '.join(sorted(TASKS)) or 'none'})")
    params = {k: v for k, v in inputs.items() if k != "task"}
    output = fn(StepContext(claim), params)
    with runs.transaction():  # the event is written only if the output is recorded
        timeline.emit(claim.execution, "completed", {"step_id": claim.step.step_id, "summary": f"task {name} done"})
        return runs.complete_step(claim, output, stored)
