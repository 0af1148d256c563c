"""Phases, progress and checkpoints of a long step: the pure rules, no I/O.

A long step (an agent working on a pattern, a deploy) tells the engine where it is: a
*phase* (one of ``PHASES``), a *progress* from 0 to 100, and *checkpoints*, a small JSON
state it can resume from after a crash. This module checks what a step reports; the engine
(``models.engine.checkpoints``) stores it.
"""

from __future__ import annotations

import json
from typing import Any

from shiftflow.kernel.errors import PermanentError

#: The phases of a multi-phase execution, in their usual order.
PHASES: tuple[str, ...] = ("planning", "implementing", "testing", "refining", "deploying")

#: The largest checkpoint state (JSON bytes): a checkpoint says where to resume, it is not
#: a place for the work itself (artifacts and outputs are).
MAX_CHECKPOINT_BYTES = 64 * 1024


class PhaseError(PermanentError):
    """Raised when a step reports a phase, progress or checkpoint that is not valid.

    ``field`` names what was wrong (``phase``, ``progress``, ``state``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def check_phase(phase: Any) -> str:
    """``phase`` if it is one of ``PHASES``.

    Raises:
        PhaseError: any other value.
    """
    if not isinstance(phase, str) or phase not in PHASES:
        raise PhaseError("phase", f"{phase!r} is not a phase: expected one of {', '.join(PHASES)}")
    return phase


def check_progress(progress: Any) -> int:
    """``progress`` as an integer from 0 to 100.

    Raises:
        PhaseError: not a number, or outside 0 to 100.
    """
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise PhaseError("progress", f"{progress!r} is not a number from 0 to 100")
    if not 0 <= progress <= 100:
        raise PhaseError("progress", f"{progress!r} is outside 0 to 100")
    return int(progress)


def check_state(state: Any) -> dict[str, Any]:
    """A checkpoint's state: a JSON object of at most ``MAX_CHECKPOINT_BYTES``.

    Raises:
        PhaseError: not an object, not JSON, or too large.
    """
    if not isinstance(state, dict):
        raise PhaseError("state", "a checkpoint is a JSON object")
    try:
        size = len(json.dumps(state).encode())
    except (TypeError, ValueError):
        raise PhaseError("state", "a checkpoint must be JSON (strings, numbers, lists, objects)") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise PhaseError("state", f"{size} bytes is more than the {MAX_CHECKPOINT_BYTES} a checkpoint may hold")
    return state
