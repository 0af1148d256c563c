"""Workflow definitions: data (JSON or YAML) validated against a published JSON Schema.

A definition names a trigger and a list of steps. A step has an ``id``, a ``type``,
``with`` (its inputs, which may hold ``{{ references }}``), and ``needs`` (the steps it
waits for). Without ``needs`` a step waits for the step before it, so a plain list
runs in order; ``needs: []`` starts a step at once (fan-out); several needs join
(``join: all`` by default, ``join: any`` to merge the ends of branches).

Branching: a ``condition`` may list ``then`` and ``else`` steps; a ``switch`` lists
``cases`` (value → steps) and ``default``. Steps of the branch not taken are skipped.
``for_each`` runs a step once per item (``{{ item }}``, ``{{ index }}``) with at most
``concurrency`` at a time. ``stop`` ends the execution successfully, ``fail`` ends it
failed. ``wait`` is a durable timer, ``wait_event`` and ``approval`` wait for an outside
signal (with a ``timeout``), ``event`` sends one (to the ``wait_event`` steps of the
workspace waiting for its key: a webhook-triggered workflow with one ``event`` step is how
a signed webhook resumes a waiting execution), ``workflow`` runs a sub-workflow and waits
for its result. A ``tool`` step calls a registered tool (``tool: email.send``) with
``with`` as its parameters and, when it names one, the credentials of a workspace
``connection``; it runs on the queue its tool declares (``tools.email``...). An ``llm``
step calls a model through a workspace ``connection`` (``openai`` or ``anthropic``), on
the ``llm`` queue: inline (``model``, ``system``, ``messages`` or ``prompt`` text,
``temperature``, ``max_tokens``, ``response_format``, ``tools``) or a stored prompt
(``prompt: <name>``, ``version``, ``variables``; no ``model``: the version holds it).

Errors name the path and the problem, e.g. ``steps[2].retry.max: must be >= 0``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import jsonschema
import yaml

from shiftflow.kernel.errors import DefinitionError

#: Step types and the actor that runs each: cheap and control steps on ``steps``,
#: outside calls on ``tools`` (each family has its own queue and worker pool).
STEP_ACTORS: dict[str, str] = {
    "condition": "steps.run",
    "switch": "steps.run",
    "transform": "steps.run",
    "stop": "steps.run",
    "fail": "steps.run",
    "wait": "steps.run",
    "wait_event": "steps.run",
    "approval": "steps.run",
    "event": "steps.run",
    "workflow": "steps.run",
    "http": "tools.call",
    # The actor of a tool step follows its tool's queue (``Step.actor``); this is the fallback.
    "tool": "tools.call",
    "price": "tools.call",
    "sideshift_swap": "sideshift.order",
    # A registered Python function that reports phases, progress and checkpoints.
    "task": "tools.call",
    # Starts a deployment and polls it between durable timers.
    "deploy": "tools.call",
    # An agent task's planner: one model call (and its re-plans) on the ``llm`` queue.
    "agent_plan": "llm.call",
    "llm": "llm.call",
}

#: The fields of an ``llm`` step (at the step's top level; they become its inputs, so they
#: may hold ``{{ references }}``). Inline: ``model`` and ``messages`` or ``prompt`` text.
#: A stored prompt: ``prompt`` (its name or id) without ``model``, ``version``, ``variables``.
LLM_FIELDS = ("model", "system", "messages", "prompt", "temperature", "max_tokens", "response_format",
              "tools", "tool_choice", "version", "variables")
#: What only the inline form sets (a stored prompt's version holds them).
LLM_INLINE_ONLY = ("system", "messages", "temperature", "max_tokens", "response_format", "tools", "tool_choice")
#: What only the stored-prompt form sets.
LLM_STORED_ONLY = ("version", "variables")
_REF = {"type": "string", "pattern": "^\\s*\\{\\{.*\\}\\}\\s*$"}

#: Step types whose inputs may reference ``secrets.*``: they send them and store them masked
#: (``kernel.runnable`` refuses a reference anywhere else; the engine gives it no value).
#: A ``tool`` step is not one: its credentials come from its ``connection``, handed to the
#: tool alone, never rendered into parameters that are stored and may be echoed.
SECRET_STEP_TYPES = frozenset({"http"})

#: Step types whose work is pure and cheap: they may run inline, in the same message as
#: the step before them, without a broker round trip (docs/architecture.md#planning-inline-steps-and-queued-steps).
INLINE_TYPES = frozenset({"condition", "switch", "transform", "stop", "fail"})

TRIGGER_TYPES = ("webhook", "schedule", "polling", "manual", "event")

_IDS = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
_DURATION = {"type": "number", "exclusiveMinimum": 0, "maximum": 31_536_000}

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
        "timeout": _DURATION,
        "retries": {
            "type": "object",
            "additionalProperties": False,
            "description": "retry a failed execution as a linked child execution, with exponential backoff",
            "properties": {
                "max": {"type": "integer", "minimum": 0, "maximum": 100},
                "backoff": {"type": "number", "minimum": 0, "maximum": 86_400},
                "max_backoff": {"type": "number", "minimum": 0, "maximum": 604_800},
            },
        },
        "concurrency": {
            "type": "object",
            "required": ["limit"],
            "additionalProperties": False,
            "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 100_000}, "key": {"type": "string"}},
        },
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": 500,
            "items": {
                "type": "object",
                "required": ["id", "type"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,99}$"},
                    "type": {"enum": sorted(STEP_ACTORS)},
                    "name": {"type": "string"},
                    "tool": {"type": "string", "minLength": 1, "maxLength": 150},
                    "connection": {"type": "string", "minLength": 1, "maxLength": 200},
                    "with": {"type": "object"},
                    "model": {"type": "string", "minLength": 1, "maxLength": 100},
                    "system": {"type": "string"},
                    "messages": {"anyOf": [_REF, {"type": "array", "minItems": 1, "maxItems": 1000, "items": {
                        "type": "object", "required": ["role", "content"], "additionalProperties": False,
                        "properties": {"role": {"enum": ["user", "assistant"]}, "content": {"type": "string"}}}}]},
                    "prompt": {"type": "string", "minLength": 1},
                    "temperature": {"anyOf": [_REF, {"type": "number", "minimum": 0, "maximum": 2}]},
                    "max_tokens": {"anyOf": [_REF, {"type": "integer", "minimum": 1, "maximum": 1_000_000}]},
                    "response_format": {"anyOf": [{"enum": ["json", "text"]}, {
                        "type": "object", "required": ["json_schema"], "additionalProperties": False,
                        "properties": {"json_schema": {"type": "object"}, "name": {"type": "string"},
                                       "strict": {"type": "boolean"}}}]},
                    "tools": {"type": "array", "maxItems": 128, "items": {
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64},
                                       "description": {"type": "string"}, "parameters": {"type": "object"}}}},
                    "tool_choice": {"type": "string", "minLength": 1, "maxLength": 64},
                    "version": {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "published"}, _REF]},
                    "variables": {"anyOf": [{"type": "object"}, _REF]},
                    "needs": _IDS,
                    "join": {"enum": ["all", "any"]},
                    "then": _IDS,
                    "else": _IDS,
                    "cases": {"type": "object", "additionalProperties": _IDS},
                    "default": _IDS,
                    "for_each": {"type": ["string", "array"]},
                    "concurrency": {"type": "integer", "minimum": 1, "maximum": 10_000},
                    "timeout": _DURATION,
                    "on_timeout": {"enum": ["fail", "continue"]},
                    "effect": {"enum": ["repeatable", "once"]},
                    "retry": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "max": {"type": "integer", "minimum": 0, "maximum": 100},
                            "backoff": {"type": "number", "minimum": 0, "maximum": 86_400},
                            "max_backoff": {"type": "number", "minimum": 0, "maximum": 604_800},
                            "jitter": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Retry:
    """A step's retry policy: transient errors retry ``max`` times with exponential backoff."""

    max: int = 3
    backoff: float = 1.0
    max_backoff: float = 300.0
    jitter: bool = True

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based); ``rand`` in [0, 1)."""
        base = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        return base * (0.5 + rand / 2) if self.jitter else base


@dataclass(frozen=True)
class Step:
    """One validated step, with its ``needs`` made explicit."""

    id: str
    type: str
    needs: tuple[str, ...]
    inputs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retry: Retry = field(default_factory=Retry)
    join: str = "all"
    then: tuple[str, ...] = ()
    orelse: tuple[str, ...] = ()
    cases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default: tuple[str, ...] = ()
    for_each: Any = None
    concurrency: int = 10
    on_timeout: str = "fail"
    effect: str = "repeatable"
    #: A ``tool`` step's tool name and the workspace connection it uses (if any).
    tool: str | None = None
    connection: str | None = None

    @property
    def actor(self) -> str:
        """The actor that runs this step: a tool step's follows its tool's queue."""
        if self.type == "tool" and self.tool:
            return _tool_actor(self.tool)
        return STEP_ACTORS[self.type]

    @property
    def retry_max(self) -> int:
        """How many times a transient failure is retried."""
        return self.retry.max

    @property
    def inline(self) -> bool:
        """True when the step may run in the same message as the step before it."""
        return self.type in INLINE_TYPES and self.for_each is None


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

    @property
    def timeout(self) -> float | None:
        """The execution timeout in seconds, if any."""
        value = self.raw.get("timeout")
        return float(value) if value is not None else None

    @property
    def concurrency(self) -> tuple[int, str] | None:
        """(limit, key template) when the workflow limits concurrent executions."""
        spec = self.raw.get("concurrency")
        return (int(spec["limit"]), str(spec.get("key", ""))) if spec else None


def _tool_actor(name: str) -> str:
    """The actor of the queue tool ``name`` runs on; ``tools.call`` for an unknown tool
    (a plugin uninstalled since the version was applied), where its step fails by name."""
    from shiftflow.kernel.contracts import Queue
    from shiftflow.kernel.tools.registry import default_registry

    registry = default_registry()
    return Queue.TOOL_ACTORS.get(registry.get(name).queue, "tools.call") if name in registry else "tools.call"


def _tool_effect(name: str) -> str:
    """The effect tool ``name`` declares (``email.send``: once), the default of its steps."""
    from shiftflow.kernel.tools.registry import default_registry

    registry = default_registry()
    return registry.get(name).effect if name in registry else "repeatable"


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "anyOf" and error.context:
        # Say what the likeliest alternative wanted, not "valid under none of the schemas".
        # An alternative that had the right type and failed a bound says most.
        telling = [e for e in error.context if e.validator not in ("type", "pattern", "const", "enum")]
        return _message(telling[0] if telling else jsonschema.exceptions.best_match(error.context))
    if error.validator == "minimum":
        return f"must be >= {error.validator_value}"
    if error.validator == "maximum":
        return f"must be <= {error.validator_value}"
    if error.validator == "enum":
        return f"must be one of {', '.join(map(str, error.validator_value))}"
    return str(error.message)


def parse(text: str | bytes | IO[bytes]) -> dict[str, Any]:
    """Parse a definition from JSON or YAML text (or an open binary file, whose name the
    YAML errors then cite).

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


def parse_file(path: str) -> dict[str, Any]:
    """Parse the definition in the file at ``path``.

    Raises:
        DefinitionError: not YAML/JSON or not a mapping; the message names the file.
        FileNotFoundError: no such file.
    """
    with open(path, "rb") as handle:
        try:
            return parse(handle)
        except DefinitionError as exc:
            raise DefinitionError(f"{path}: {exc}") from None


def _branch_targets(item: dict[str, Any]) -> list[str]:
    targets = list(item.get("then", [])) + list(item.get("else", [])) + list(item.get("default", []))
    for ids in item.get("cases", {}).values():
        targets.extend(ids)
    return targets


def _llm_inputs(item: dict[str, Any], index: int) -> dict[str, Any]:
    """An ``llm`` step's fields, checked for one form or the other, as its inputs."""
    where = f"steps[{index}]"
    if "with" in item:
        raise DefinitionError(f"{where}.with: an llm step sets its fields on the step itself (model, prompt...)")
    if "model" in item:
        if "messages" not in item and "prompt" not in item:
            raise DefinitionError(f"{where}.messages: an llm step with a model needs messages or prompt text")
        if "messages" in item and "prompt" in item:
            raise DefinitionError(f"{where}.prompt: give messages or prompt text, not both")
        for key in LLM_STORED_ONLY:
            if key in item:
                raise DefinitionError(f"{where}.{key}: only a stored prompt (prompt: <name>, no model) has {key}")
        if "connection" not in item:
            raise DefinitionError(f"{where}.connection: an llm step names its connection (connection: openai-main)")
    else:
        if "prompt" not in item:
            raise DefinitionError(f"{where}.model: an llm step names a model, or a stored prompt (prompt: <name>)")
        for key in LLM_INLINE_ONLY:
            if key in item:
                raise DefinitionError(f"{where}.{key}: a stored prompt's version sets {key} (or give a model "
                                      "for an inline call)")
    return {key: item[key] for key in LLM_FIELDS if key in item}


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
    items = raw["steps"]
    ids = [item["id"] for item in items]
    for index, step_id in enumerate(ids):
        if step_id in ids[:index]:
            raise DefinitionError(f"steps[{index}].id: duplicate step id {step_id!r}")
    # A step named in a branch of a condition/switch needs that step, implicitly.
    implicit: dict[str, list[str]] = {}
    for index, item in enumerate(items):
        for target in _branch_targets(item):
            if target not in ids:
                raise DefinitionError(f"steps[{index}]: branch names unknown step {target!r}")
            if ids.index(target) <= index:
                raise DefinitionError(f"steps[{index}]: branch step {target!r} must be listed after {item['id']!r}")
            if item["type"] not in ("condition", "switch"):
                raise DefinitionError(f"steps[{index}]: only condition and switch steps have branches")
            implicit.setdefault(target, []).append(item["id"])
    steps: list[Step] = []
    for index, item in enumerate(items):
        needs = item.get("needs")
        if needs is None:
            needs = [steps[-1].id] if steps else []
        needs = list(needs) + [d for d in implicit.get(item["id"], []) if d not in needs]
        for need in needs:
            if need not in ids[:index]:
                raise DefinitionError(
                    f"steps[{index}].needs: unknown step {need!r} (a step may only need steps listed before it)"
                )
        if item["type"] == "tool" and not item.get("tool"):
            raise DefinitionError(f"steps[{index}].tool: a tool step names its tool (tool: email.send)")
        if "tool" in item and item["type"] != "tool":
            raise DefinitionError(f"steps[{index}].tool: only tool steps have a tool")
        if "connection" in item and item["type"] not in ("tool", "llm"):
            raise DefinitionError(f"steps[{index}].connection: only tool and llm steps have a connection")
        inputs = item.get("with", {})
        if item["type"] == "llm":
            inputs = _llm_inputs(item, index)
        else:
            for key in LLM_FIELDS:
                if key in item:
                    raise DefinitionError(f"steps[{index}].{key}: only llm steps have a {key}")
        retry = item.get("retry", {})
        steps.append(
            Step(
                id=item["id"],
                type=item["type"],
                needs=tuple(needs),
                inputs=inputs,
                timeout=item.get("timeout"),
                retry=Retry(max=retry.get("max", 3), backoff=retry.get("backoff", 1.0),
                            max_backoff=retry.get("max_backoff", 300.0), jitter=retry.get("jitter", True)),
                join=item.get("join", "all"),
                then=tuple(item.get("then", ())),
                orelse=tuple(item.get("else", ())),
                cases={str(k): tuple(v) for k, v in item.get("cases", {}).items()},
                default=tuple(item.get("default", ())),
                for_each=item.get("for_each"),
                concurrency=item.get("concurrency", 10),
                on_timeout=item.get("on_timeout", "fail"),
                effect=item.get("effect") or (_tool_effect(item["tool"]) if item["type"] == "tool" else "repeatable"),
                tool=item.get("tool"),
                connection=item.get("connection"),
            )
        )
    trigger_type = raw.get("trigger", {}).get("type", "manual")
    return Definition(name=raw["name"], steps=tuple(steps), trigger_type=trigger_type, raw=raw)
