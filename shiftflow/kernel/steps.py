"""Pure step logic: conditions, transforms and the planner. No clock, no I/O.

The planner looks at the state of every step of one execution and decides which steps
become ready, which are skipped (a branch not taken), and whether the execution is
finished. The models layer calls it inside the transaction that records a step's
result, with the execution row locked, so two steps finishing at once cannot both
miss (or both start) a step that needs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from shiftflow.kernel.definition import Definition
from shiftflow.kernel.errors import PermanentError

TERMINAL = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELLED", "TIMED_OUT"})


class ConditionError(PermanentError):
    """Raised when a condition's operator or operands cannot be compared."""


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def compare(left: Any, op: str, right: Any) -> bool:
    """Compare two values; numbers and numeric strings compare as decimals.

    Raises:
        ConditionError: unknown operator, or an ordering between incomparable values.
    """
    if op in ("exists",):
        return left is not None
    if op in ("in", "not_in"):
        if not isinstance(right, list | str | dict):
            raise ConditionError(f"operator {op!r} needs a list, string or object on the right")
        found = left in right
        return found if op == "in" else not found
    if op == "contains":
        if not isinstance(left, list | str | dict):
            raise ConditionError("operator 'contains' needs a list, string or object on the left")
        return right in left
    ln, rn = _number(left), _number(right)
    if ln is not None and rn is not None:
        left, right = ln, rn
    if op in ("==", "eq"):
        return bool(left == right)
    if op in ("!=", "ne"):
        return bool(left != right)
    ops = {"<": "__lt__", "lt": "__lt__", "<=": "__le__", "lte": "__le__", ">": "__gt__", "gt": "__gt__",
           ">=": "__ge__", "gte": "__ge__", "below": "__lt__", "above": "__gt__"}
    if op not in ops:
        raise ConditionError(f"unknown operator {op!r}")
    try:
        outcome = getattr(left, ops[op])(right)
    except TypeError:
        outcome = NotImplemented
    if outcome is NotImplemented:
        raise ConditionError(f"cannot compare {type(left).__name__} {op} {type(right).__name__}")
    return bool(outcome)


def evaluate_condition(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate a rendered condition step: ``{left, op, right}``, ``{all: [...]}`` or ``{any: [...]}``.

    Returns:
        ``{"passed": bool}``; steps that need a condition that did not pass are skipped.
    """
    if "all" in inputs:
        return {"passed": all(evaluate_condition(c)["passed"] for c in inputs["all"])}
    if "any" in inputs:
        return {"passed": any(evaluate_condition(c)["passed"] for c in inputs["any"])}
    if "op" not in inputs:
        raise ConditionError("a condition needs 'op' (with 'left' and 'right'), 'all' or 'any'")
    return {"passed": compare(inputs.get("left"), str(inputs["op"]), inputs.get("right"))}


def transform(inputs: Mapping[str, Any]) -> Any:
    """A rendered transform step's output: its ``output`` input, or all its inputs."""
    return inputs["output"] if "output" in inputs else dict(inputs)


def evaluate_switch(inputs: Mapping[str, Any], cases: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the case whose key equals ``str(inputs["value"])``, else ``"default"``."""
    if "value" not in inputs:
        raise ConditionError("a switch needs a 'value'")
    value = inputs["value"]
    key = value if isinstance(value, str) else json.dumps(value)
    return {"case": key if key in cases else "default", "value": value}


@dataclass(frozen=True)
class StepState:
    """What the planner needs to know of one step row."""

    status: str
    output: Any = None


@dataclass
class Plan:
    """The planner's decision for one execution."""

    ready: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    finished: bool = False
    failed: bool = False
    stopped: bool = False


def _blocks(definition: Definition, need: str, state: StepState, dependent: str) -> bool:
    """True when ``need`` ended in a way that skips ``dependent`` (a branch not taken)."""
    if state.status == "SKIPPED":
        return True
    if state.status != "SUCCEEDED":
        return False
    step = definition.step(need)
    output = state.output if isinstance(state.output, dict) else {}
    if step.type == "condition":
        passed = bool(output.get("passed"))
        return passed if dependent in step.orelse else not passed
    if step.type == "switch":
        listed = [ids for ids in step.cases.values() if dependent in ids] or []
        if not listed and dependent not in step.default:
            return False
        chosen = output.get("case")
        taken = step.default if chosen == "default" else step.cases.get(str(chosen), ())
        return dependent not in taken
    return False


def plan(definition: Definition, states: Mapping[str, StepState]) -> Plan:
    """Decide which steps start now, which are skipped, and whether the execution is done.

    Parameters:
        definition: the pinned workflow version.
        states: step id → state, for every step row that exists.
    """
    result = Plan()
    known = dict(states)
    if any(s.status in ("FAILED", "CANCELLED", "TIMED_OUT") for s in known.values()):
        result.failed = True
        result.finished = all(s.status in TERMINAL for s in known.values())
        return result
    if any(definition.step(sid).type == "stop" and s.status == "SUCCEEDED" for sid, s in known.items()):
        result.stopped = True
        result.skipped = [step.id for step in definition.steps if step.id not in known]
        result.finished = all(s.status in TERMINAL for s in known.values())
        return result
    for step in definition.steps:
        if step.id in known:
            continue
        needs = [known.get(n) for n in step.needs]
        if any(n is None or n.status not in TERMINAL for n in needs):
            continue
        open_needs = [not _blocks(definition, name, n, step.id) for name, n in zip(step.needs, needs, strict=True) if n]
        runs = any(open_needs) if step.join == "any" and step.needs else all(open_needs)
        if runs:
            result.ready.append(step.id)
            known[step.id] = StepState("PENDING")
        else:
            result.skipped.append(step.id)
            known[step.id] = StepState("SKIPPED")
    result.finished = len(known) == len(definition.steps) and all(s.status in TERMINAL for s in known.values())
    return result
