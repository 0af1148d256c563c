"""Run one step's work given its rendered inputs: dispatch by step type.

Conditions and transforms are pure; the HTTP tool is the one outside call here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.definition import Step
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.expressions import render
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.steps import evaluate_condition, transform
from shiftflow.kernel.tools import http


def execute(step: Step, context: Mapping[str, Any], settings: Settings) -> Any:
    """Render the step's inputs against ``context`` and run it.

    Returns:
        The step's output (JSON-able).

    Raises:
        PermanentError: bad inputs, a failed condition expression, a refused call.
        TransientError: an outside call that may pass later.
    """
    inputs = render(step.inputs, context)
    if step.type == "condition":
        return evaluate_condition(inputs)
    if step.type == "transform":
        return transform(inputs)
    if step.type == "http":
        timeout = min(step.timeout or settings.http_timeout_seconds, settings.http_timeout_seconds * 6)
        return http.call(inputs, timeout=timeout, allow_private=settings.http_allow_private)
    raise PermanentError(f"step {step.id!r}: unknown step type {step.type!r}")
