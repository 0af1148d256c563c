"""Run one step's work: pure steps from their rendered inputs, outside calls by type.

Pure steps (condition, switch, transform, stop, fail) have no clock and no I/O, so the
engine may run them inline inside the transaction that decided them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from shiftflow.kernel import observe
from shiftflow.kernel.definition import Step
from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.kernel.expressions import render
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.kernel.sizes import check_size
from shiftflow.kernel.steps import evaluate_condition, evaluate_switch, transform
from shiftflow.kernel.tools import http

PURE_TYPES = frozenset({"condition", "switch", "transform", "stop", "fail"})


class StepFailed(PermanentError):
    """Raised by a ``fail`` step: the workflow itself decided to fail, with its message."""


def pure(step: Step, inputs: Mapping[str, Any]) -> Any:
    """Run a pure step on already rendered inputs.

    Raises:
        PermanentError: a bad condition, an unknown step type, or a ``fail`` step.
    """
    if step.type == "condition":
        return evaluate_condition(inputs)
    if step.type == "switch":
        return evaluate_switch(inputs, step.cases)
    if step.type == "transform":
        return transform(inputs)
    if step.type == "stop":
        return {"stopped": True, **dict(inputs)}
    if step.type == "fail":
        raise StepFailed(str(inputs.get("message", f"failed by step {step.id!r}")))
    raise PermanentError(f"step {step.id!r}: {step.type!r} is not a pure step")


def check_inputs(inputs: Any, settings: Settings) -> None:
    """Refuse rendered inputs over ``SHIFTFLOW_STEP_MAX_INPUT_BYTES``.

    Raises:
        SizeLimitExceeded: naming the cap.
    """
    check_size(inputs, settings.step_max_input_bytes, "rendered inputs", "SHIFTFLOW_STEP_MAX_INPUT_BYTES")


def check_output(output: Any, settings: Settings) -> None:
    """Refuse a step output over ``SHIFTFLOW_STEP_MAX_OUTPUT_BYTES``.

    Raises:
        SizeLimitExceeded: naming the cap.
    """
    check_size(output, settings.step_max_output_bytes, "output", "SHIFTFLOW_STEP_MAX_OUTPUT_BYTES")


def run_pure(step: Step, context: Mapping[str, Any]) -> Any:
    """Render a pure step's inputs against ``context`` and run it; both its rendered inputs
    and its output are held to the step caps (a chain of whole-value references multiplies
    a value without copying it, until something stores it).

    Raises:
        PermanentError: a bad reference or condition, a ``fail`` step, a cap passed.
    """
    settings = get_settings()
    inputs = render(step.inputs, context)
    check_inputs(inputs, settings)
    output = pure(step, inputs)
    check_output(output, settings)
    return output


def call_tool(step: Step, inputs: Mapping[str, Any], settings: Settings,
              redact: http.Redact | None = None) -> Any:
    """Make the outside call of a tool step with its rendered inputs.

    ``redact`` masks the values of the secrets the inputs hold in every error message,
    before anything shortens it (a secret cut in two would escape a later mask).

    Raises:
        PermanentError: bad inputs or a refused call.
        TransientError: a call that may pass later.
    """
    if step.type == "http":
        timeout = min(step.timeout or settings.http_timeout_seconds, settings.http_timeout_seconds * 6)
        started, outcome = time.perf_counter(), "error"
        try:
            answer = http.call(inputs, timeout=timeout, allow_private=settings.http_allow_private,
                               redact=redact or str)
            outcome = "ok"
            return answer
        except PermanentError:
            outcome = "permanent"
            raise
        except TransientError:
            outcome = "transient"
            raise
        finally:
            observe.tool_call(step.type, outcome, time.perf_counter() - started)
    if step.type in PURE_TYPES:
        return pure(step, inputs)
    raise PermanentError(f"step {step.id!r}: unknown tool step type {step.type!r}")
