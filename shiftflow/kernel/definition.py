"""Workflow definitions: data (JSON or YAML) validated against a published JSON Schema.

A definition names a trigger and a list of steps. A step has an ``id``, a ``type``,
``with`` (its inputs, which may hold ``{{ references }}``), and ``needs`` (the steps it
waits for). Without ``needs`` a step waits for the step before it, so a plain list
runs in order; ``needs: []`` starts a step at once (fan-out), several needs join.

Errors name the path and the problem, e.g. ``steps[2].needs: unknown step 'x'``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

from shiftflow.kernel.errors import DefinitionError

#: Step types and the actor that runs each (cheap steps on ``steps``, outside calls on ``tools``).
STEP_ACTORS: dict[str, str] = {
    "condition": "steps.run",
    "transform": "steps.run",
    "http": "tools.call",
}

TRIGGER_TYPES = ("webhook", "schedule", "polling", "manual", "event")

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://shiftflow.dev/schema/workflow.json",
    "title": "ShiftFlow workflow definition",
    "type": "object",
    "required": ["name", "steps"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": {"type": "string"},
        "trigger": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": list(TRIGGER_TYPES)}},
        },
        "vars": {"type": "object"},
        "priority": {"enum": ["LOW", "NORMAL", "HIGH", "CRITICAL"]},
        "max_executions": {"type": "integer", "minimum": 1},
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,99}$"},
                    "type": {"enum": sorted(STEP_ACTORS)},
                    "name": {"type": "string"},
                    "with": {"type": "object"},
                    "needs": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                    "retry": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "max": {"type": "integer", "minimum": 0, "maximum": 100},
                            "backoff": {"type": "number", "minimum": 0},
                        },
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Step:
    """One validated step, with its ``needs`` made explicit."""

    id: str
    type: str
    needs: tuple[str, ...]
    inputs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retry_max: int = 3

    @property
    def actor(self) -> str:
        """The actor that runs this step."""
        return STEP_ACTORS[self.type]


@dataclass(frozen=True)
class Definition:
    """A validated workflow definition."""

    name: str
    steps: tuple[Step, ...]
    trigger_type: str
    raw: dict[str, Any]

    def step(self, step_id: str) -> Step:
        """The step named ``step_id``.

        Raises:
            DefinitionError: no such step.
        """
        for step in self.steps:
            if step.id == step_id:
                return step
        raise DefinitionError(f"steps: unknown step {step_id!r}")


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "minimum":
        return f"must be >= {error.validator_value}"
    if error.validator == "maximum":
        return f"must be <= {error.validator_value}"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))}"
    return str(error.message)


def parse(text: str | bytes) -> dict[str, Any]:
    """Parse a definition from JSON or YAML text.

    Raises:
        DefinitionError: the text is neither, or is not a mapping.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"(root): not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DefinitionError("(root): a definition must be a mapping with 'name' and 'steps'")
    return data


def validate(data: Mapping[str, Any]) -> Definition:
    """Validate a definition and return it with every step's ``needs`` explicit.

    Raises:
        DefinitionError: the first problem found, naming its path.
    """
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        best = errors[0]
        raise DefinitionError(f"{_path(best)}: {_message(best)}")
    raw = json.loads(json.dumps(data))
    steps: list[Step] = []
    seen: set[str] = set()
    for index, item in enumerate(raw["steps"]):
        if item["id"] in seen:
            raise DefinitionError(f"steps[{index}].id: duplicate step id {item['id']!r}")
        needs = item.get("needs")
        if needs is None:
            needs = [steps[-1].id] if steps else []
        for need in needs:
            if need not in seen:
                raise DefinitionError(
                    f"steps[{index}].needs: unknown step {need!r} (a step may only need steps listed before it)"
                )
        seen.add(item["id"])
        steps.append(
            Step(
                id=item["id"],
                type=item["type"],
                needs=tuple(needs),
                inputs=item.get("with", {}),
                timeout=item.get("timeout"),
                retry_max=item.get("retry", {}).get("max", 3),
            )
        )
    trigger_type = raw.get("trigger", {}).get("type", "manual")
    return Definition(name=raw["name"], steps=tuple(steps), trigger_type=trigger_type, raw=raw)
