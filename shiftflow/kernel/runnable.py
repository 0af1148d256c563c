"""Checks that a validated definition can run, made where it is applied (never at load).

``definition.validate`` checks the shape against the JSON Schema; a definition can have
the right shape and still never run: a schedule whose cron has minute 61, a polling
trigger with no URL, a reference to a step that does not exist. The scheduler, the
poller and the reference resolver would refuse those at run time, over and over; here
the same functions (``kernel.triggers``) and the resolver's own rules refuse them when a
person applies or validates the definition, naming the field.

A ``tool`` step names a registered tool, and its ``with`` as written must not already fail
the tool's parameter schema (``steps[3].with.to: 'x' is not an email``).

Secrets (``{{ secrets.<connection>.<field> }}``) may appear only in what an ``http`` step
sends (its ``with``; a ``tool`` step gets its credentials through its ``connection``): that is the one place a value goes out without being stored. In any
other step the rendered value is stored (a wait's inputs, an event's data, a
sub-workflow's trigger data and result, a transform's output...) and shown to every
viewer of the execution, so such a reference is refused, naming the field and the step.

Stored versions are not re-checked when they are loaded: a version applied before a
check existed keeps running as it did (a misplaced secret reference in one fails its
step at run time, ``models.engine.connection_secrets.UNAVAILABLE``, without decrypting anything).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shiftflow.kernel import expressions
from shiftflow.kernel.cron import ScheduleError
from shiftflow.kernel.definition import LLM_FIELDS, SECRET_STEP_TYPES, Definition
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.tools.registry import UnknownTool, default_registry
from shiftflow.kernel.triggers import definition_config, poll_config

#: The names a reference may start with (``kernel.expressions`` resolves nothing else).
ROOTS = frozenset({"trigger", "steps", "vars", "item", "index", "secrets", "execution"})


def check_runnable(definition: Definition) -> None:
    """Refuse a definition that can never run.

    Raises:
        DefinitionError: the first problem, naming its path (``trigger.cron: ...``,
            ``steps[2].with.url: reference {{ steps.nope.output }} names no step 'nope'``).
    """
    _check_trigger(definition.raw.get("trigger") or {})
    _check_references(definition)
    _check_secret_placement(definition)
    _check_tools(definition)
    _check_llm(definition)


def _check_llm(definition: Definition) -> None:
    """Refuse an ``llm`` step whose answer schema or tool schemas are not JSON Schemas, or
    whose tools share a name (the provider would refuse the call, every time)."""
    import jsonschema

    for index, item in enumerate(definition.raw.get("steps", [])):
        if item["type"] != "llm":
            continue
        where = f"steps[{index}]"
        fmt = item.get("response_format")
        schemas = [(f"{where}.response_format.json_schema", fmt["json_schema"])] if isinstance(fmt, dict) else []
        names: set[str] = set()
        for n, tool in enumerate(item.get("tools") or ()):
            if tool["name"] in names:
                raise DefinitionError(f"{where}.tools[{n}].name: {tool['name']!r} is offered twice")
            names.add(tool["name"])
            if "parameters" in tool:
                schemas.append((f"{where}.tools[{n}].parameters", tool["parameters"]))
        choice = item.get("tool_choice")
        if choice not in (None, "auto", "required", "none") and choice not in names:
            raise DefinitionError(f"{where}.tool_choice: {choice!r} names no tool of the step")
        for path, schema in schemas:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise DefinitionError(f"{path}: not a valid JSON Schema: {exc.message}") from None


def _check_tools(definition: Definition) -> None:
    """Refuse a ``tool`` step whose tool is not registered, or whose ``with`` as written
    already fails the tool's parameter schema (values with references are checked again,
    rendered, before the call).

    Raises:
        DefinitionError: ``steps[3].tool: unknown tool 'x'; known tools: ...`` or
            ``steps[3].with.to: 'x' is not an email`` (every problem of the step, in field order).
    """
    registry = default_registry()
    for index, item in enumerate(definition.raw.get("steps", [])):
        if item["type"] != "tool":
            continue
        try:
            tool = registry.get(item["tool"])
        except UnknownTool as exc:
            raise DefinitionError(f"steps[{index}].tool: {exc}") from None
        problems = tool.static_problems(item.get("with", {}), where=f"steps[{index}].with")
        if problems:
            raise DefinitionError(f"{'; '.join(problems)} (step {item['id']!r}, tool {tool.name})")


def _check_trigger(trigger: dict[str, Any]) -> None:
    kind = trigger.get("type", "manual")
    try:
        if kind == "schedule":
            definition_config(trigger)
        elif kind == "polling":
            poll_config(trigger)
    except ScheduleError as exc:
        raise DefinitionError(str(exc)) from None


def references(text: str) -> Iterator[str]:
    """The paths of the ``{{ ... }}`` references in ``text``, in order: exactly the ones the
    renderer resolves (``expressions.references``, a linear scan)."""
    for _start, _end, path in expressions.references(text):
        yield path


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _check_references(definition: Definition) -> None:
    ids = {step.id for step in definition.steps}
    variables = definition.raw.get("vars") or {}
    fields = ("with", "for_each", "system", "messages", "prompt", "temperature", "max_tokens", "version",
              "variables")
    for index, item in enumerate(definition.raw.get("steps", [])):
        for name in fields:
            if name not in item:
                continue
            for where, text in _strings(item[name], f"steps[{index}].{name}"):
                for ref in references(text):
                    problem = _problem(ref, ids, variables, item.get("for_each") is not None, item["id"])
                    if problem:
                        raise DefinitionError(f"{where}: reference {{{{ {ref} }}}} {problem}")
    concurrency = definition.raw.get("concurrency") or {}
    if isinstance(concurrency.get("key"), str):
        for ref in references(concurrency["key"]):
            problem = _problem(ref, set(), variables, False, None)
            if problem:
                raise DefinitionError(f"concurrency.key: reference {{{{ {ref} }}}} {problem}")


def _problem(ref: str, ids: set[str], variables: Any, fans_out: bool, own_id: str | None) -> str | None:
    """Why ``ref`` can never resolve in this definition, or None."""
    parts = ref.split(".")
    root = parts[0]
    if root not in ROOTS:
        return f"starts with {root!r}: a reference starts with {', '.join(sorted(ROOTS))}"
    if root == "steps":
        if len(parts) < 2 or not parts[1]:
            return "names no step (use steps.<id>.output)"
        if parts[1] not in ids:
            return f"names no step {parts[1]!r}"
        if parts[1] == own_id:
            return "reads the step's own output, which does not exist while it runs"
        if len(parts) > 2 and parts[2] not in ("output", "status"):
            return f"reads {parts[2]!r} of a step: only output and status exist"
    if root in ("item", "index") and not fans_out:
        return f"uses {root!r} outside a for_each step"
    if root == "vars" and len(parts) > 1 and isinstance(variables, dict) and parts[1] not in variables:
        return f"names no variable {parts[1]!r} (vars has {', '.join(sorted(variables)) or 'none'})"
    if root == "secrets" and len(parts) < 3:
        return "needs a connection and a field (secrets.<connection>.<field>)"
    return None


def _check_secret_placement(definition: Definition) -> None:
    """Refuse a ``secrets`` reference anywhere its value would be stored (module docstring).

    Raises:
        DefinitionError: ``steps[3].with.data.token: step 'notify' (event) may not use
            secrets.crm.token: ...``.
    """
    why = "a secret is decrypted only for what an http step sends; here it would be stored in clear"
    for index, item in enumerate(definition.raw.get("steps", [])):
        fields: tuple[str, ...] = ("for_each",) if item["type"] in SECRET_STEP_TYPES else ("with", "for_each")
        if item["type"] == "llm":
            # A model call's fields sit at the step's top level; its messages, prompt and
            # variables are stored (the llm_call row, the prompt run), never only sent.
            fields += LLM_FIELDS
        for name in fields:
            for where, text in _strings(item.get(name), f"steps[{index}].{name}"):
                for ref in references(text):
                    if ref.split(".")[0] == "secrets":
                        raise DefinitionError(f"{where}: step {item['id']!r} ({item['type']}) may not use {ref}: {why}")
    key = (definition.raw.get("concurrency") or {}).get("key")
    for ref in references(key) if isinstance(key, str) else ():
        if ref.split(".")[0] == "secrets":
            raise DefinitionError(f"concurrency.key: the concurrency key may not use {ref}: {why}")
