"""Trigger actors: a trigger message becomes (at most) one execution."""

from __future__ import annotations

from typing import Any

from shiftflow.actors import actor
from shiftflow.kernel.contracts import TriggerPayload, decode
from shiftflow.kernel.enqueue import send_all
from shiftflow.models.engine.run_trigger import run_trigger


@actor("triggers.start")
def start(payload: dict[str, Any]) -> None:
    """Create the execution for this delivery once, then publish its first steps."""
    send_all(run_trigger(decode(TriggerPayload, payload)))
