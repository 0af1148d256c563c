"""Agent task plans: what the planner model is asked, what it must answer, and how an answer
becomes workflow steps. Pure: no clock, no I/O, no database.

A plan is a JSON object ``{"steps": [{"tool", "params", "connection"?, "why"?}, ...]}``.
Step ``n`` (1-based) may use an earlier step's result in its parameters with a reference
``{{ steps.<m>.output.<path> }}`` (m < n), or the engine's own step ids
(``{{ steps.step_<m>.output... }}``); the task's intent is ``{{ trigger.intent }}``.
``check`` lists every problem of a plan (unknown tool, parameters refused by the tool's
JSON Schema, a reference to no earlier step, a connection that does not fit); the planner
step sends them back to the model, which answers again, up to a limit.
``to_definition`` turns an accepted plan into the steps the engine runs: the plan step
itself, an ``approval`` step when a person must approve, and one ``tool`` step per call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shiftflow.kernel.tools.base import Tool

#: The name of the one workflow per workspace whose executions are agent tasks.
TASK_WORKFLOW = "agent-tasks"
#: Step ids of the task workflow: the planner, the optional approval, the tool calls.
PLAN_STEP = "plan"
APPROVAL_STEP = "approve"
TOOL_STEP_PREFIX = "step_"
#: The step type of the planner (run on the ``llm`` queue).
PLAN_STEP_TYPE = "agent_plan"
#: The most tool calls one plan may hold.
MAX_PLAN_STEPS = 20

#: The definition every task starts with: only the planner step. The accepted plan
#: becomes a new version of the same workflow, pinned by that task alone.
PLANNING_DEFINITION: dict[str, Any] = {
    "name": TASK_WORKFLOW,
    "description": "agent tasks: an intent planned into tool calls (one version per planned task)",
    "trigger": {"type": "manual"},
    "steps": [{"id": PLAN_STEP, "type": PLAN_STEP_TYPE}],
}

#: The JSON Schema of the planner's answer (asked as structured output).
PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["steps"],
    "additionalProperties": False,
    "properties": {
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PLAN_STEPS,
            "items": {
                "type": "object",
                "required": ["tool", "params"],
                "additionalProperties": False,
                "properties": {
                    "tool": {"type": "string", "minLength": 1, "maxLength": 150},
                    "params": {"type": "object"},
                    "connection": {"type": "string", "minLength": 1, "maxLength": 200},
                    "why": {"type": "string", "maxLength": 500},
                },
            },
        },
    },
}

SYSTEM_PROMPT = """You plan tasks for an automation system. Answer only with a JSON object
{"steps": [{"tool": NAME, "params": {...}, "connection": NAME (only for tools that need one), "why": TEXT}]}
listing the tool calls, in order, that carry out the user's intent. Use only the tools below, with
parameters that match each tool's JSON Schema exactly. A later call may use an earlier call's result:
write {{ steps.N.output.FIELD }} (N is the 1-based number of the earlier call) as a parameter value;
an artifact a tool returned is passed on as {{ steps.N.output.artifact }}.
"""

_REF = re.compile(r"\{\{\s*steps\.(\d+)\.")
_ANY_REF = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


@dataclass(frozen=True)
class PlannedCall:
    """One accepted tool call of a plan."""

    tool: str
    params: dict[str, Any]
    connection: str | None = None
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The call as stored in the task's plan."""
        out: dict[str, Any] = {"tool": self.tool, "params": self.params}
        if self.connection:
            out["connection"] = self.connection
        if self.why:
            out["why"] = self.why
        return out


@dataclass
class Checked:
    """The outcome of ``check``: the calls (when there is no problem) and the problems."""

    calls: list[PlannedCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the plan can run."""
        return not self.problems and bool(self.calls)


def catalogue_text(tools: Iterable[Tool], connections: Mapping[str, str]) -> str:
    """The tools (name, description, the connection kind it needs, parameter schema) and the
    workspace's connections (name -> integration), as the planner's system text sees them."""
    lines = [SYSTEM_PROMPT, "Tools:"]
    for tool in sorted(tools, key=lambda t: t.name):
        needs = f" (needs a connection of kind {tool.integration})" if tool.integration else ""
        lines.append(f"- {tool.name}{needs}: {tool.description}")
        lines.append(f"  parameters: {json.dumps(tool.params_schema, sort_keys=True)}")
    if connections:
        lines.append("Connections:")
        lines += [f"- {name} (kind {kind})" for name, kind in sorted(connections.items())]
    return "\n".join(lines)


def refusal_text(problems: list[str]) -> str:
    """The message that sends a refused plan back to the model."""
    return ("The plan was refused. Problems:\n" + "\n".join(f"- {p}" for p in problems)
            + "\nAnswer with a corrected plan (the whole JSON object).")


def parse_answer(text: str | None, parsed: Any = None) -> tuple[Any, list[str]]:
    """The plan object of a model answer (its parsed JSON, else its text decoded), or problems."""
    if parsed is not None:
        return parsed, []
    if not text:
        return None, ["plan: the answer is empty (expected a JSON object with 'steps')"]
    try:
        return json.loads(text), []
    except ValueError as exc:
        return None, [f"plan: the answer is not JSON: {exc}"]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _rewrite(value: Any) -> Any:
    """``{{ steps.2.output.x }}`` -> ``{{ steps.step_2.output.x }}`` (the engine's step ids)."""
    if isinstance(value, str):
        return _REF.sub(lambda m: "{{ steps." + TOOL_STEP_PREFIX + m.group(1) + ".", value)
    if isinstance(value, dict):
        return {k: _rewrite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v) for v in value]
    return value


def _reference_problems(params: Any, number: int, where: str) -> list[str]:
    problems = []
    for text in _strings(params):
        for match in _ANY_REF.finditer(text):
            path = match.group(1)
            parts = path.split(".")
            if parts[0] == "trigger" and len(parts) >= 2:
                continue
            ref_step = parts[1] if parts[0] == "steps" and len(parts) >= 3 else None
            if ref_step is not None and ref_step.startswith(TOOL_STEP_PREFIX):
                ref_step = ref_step[len(TOOL_STEP_PREFIX):]
            if ref_step is None or not ref_step.isdigit() or parts[2] != "output":
                problems.append(f"{where}: reference {{{{ {path} }}}} is not steps.N.output... or trigger.intent")
            elif not 1 <= int(ref_step) < number:
                problems.append(f"{where}: reference {{{{ {path} }}}} names no earlier step (this is step {number})")
    return problems


def check(answer: Any, tools: Mapping[str, Tool], connections: Mapping[str, str]) -> Checked:
    """Check a plan against the enabled tools and the workspace's connections.

    Parameters:
        answer: the decoded answer.
        tools: enabled tool name -> tool (disabled ones are unknown to the plan).
        connections: the workspace's active connection names -> their integration key.

    Returns:
        Every problem, each naming its place (``steps[1].params.to: 'x' is not an email``).
    """
    out = Checked()
    if not isinstance(answer, dict) or not isinstance(answer.get("steps"), list):
        out.problems.append("plan: expected a JSON object with a list 'steps'")
        return out
    steps = answer["steps"]
    if not steps:
        out.problems.append("plan.steps: the plan holds no tool call")
    if len(steps) > MAX_PLAN_STEPS:
        out.problems.append(f"plan.steps: {len(steps)} calls, at most {MAX_PLAN_STEPS}")
        return out
    for index, item in enumerate(steps):
        where = f"steps[{index}]"
        if not isinstance(item, dict):
            out.problems.append(f"{where}: expected an object with 'tool' and 'params'")
            continue
        extra = sorted(set(item) - {"tool", "params", "connection", "why"})
        if extra:
            out.problems.append(f"{where}: unknown field {extra[0]!r}")
        name, params = item.get("tool"), item.get("params", {})
        if not isinstance(name, str) or name not in tools:
            known = ", ".join(sorted(tools)) or "none"
            out.problems.append(f"{where}.tool: unknown tool {name!r}; known tools: {known}")
            continue
        tool = tools[name]
        if not isinstance(params, dict):
            out.problems.append(f"{where}.params: expected an object")
            continue
        out.problems += tool.static_problems(params, where=f"{where}.params")
        out.problems += _reference_problems(params, index + 1, f"{where}.params")
        connection = item.get("connection")
        connection, problem = _connection_for(tool, connection, connections, where)
        if problem:
            out.problems.append(problem)
        why = item.get("why")
        out.calls.append(PlannedCall(name, params, connection, why if isinstance(why, str) else ""))
    if out.problems:
        out.calls = []
    return out


def _connection_for(tool: Tool, named: Any, connections: Mapping[str, str],
                    where: str) -> tuple[str | None, str | None]:
    """The connection a call uses: the one named (it must exist and fit the tool), else the
    workspace's only connection of the tool's kind; a tool needing none takes none."""
    if named is not None and not isinstance(named, str):
        return None, f"{where}.connection: expected a connection name"
    if tool.integration is None:
        if named:
            return None, f"{where}.connection: tool {tool.name} takes no connection"
        return None, None
    if named:
        kind = connections.get(named)
        if kind is None:
            return None, f"{where}.connection: no active connection {named!r} in this workspace"
        if kind != tool.integration:
            return None, (f"{where}.connection: {named!r} is a {kind} connection; "
                          f"tool {tool.name} needs a {tool.integration} one")
        return named, None
    fitting = sorted(name for name, kind in connections.items() if kind == tool.integration)
    if len(fitting) == 1:
        return fitting[0], None
    if not fitting:
        return None, f"{where}.connection: tool {tool.name} needs a {tool.integration} connection; none exists"
    return None, f"{where}.connection: tool {tool.name} needs one of the connections {', '.join(fitting)}"


def to_definition(calls: list[PlannedCall], *, approval: bool) -> dict[str, Any]:
    """The workflow definition that runs an accepted plan (the planner step comes first, so
    the task keeps its planning row; then the approval, then the calls in order)."""
    steps: list[dict[str, Any]] = [{"id": PLAN_STEP, "type": PLAN_STEP_TYPE}]
    if approval:
        steps.append({"id": APPROVAL_STEP, "type": "approval"})
    for number, call in enumerate(calls, start=1):
        step: dict[str, Any] = {"id": f"{TOOL_STEP_PREFIX}{number}", "type": "tool", "tool": call.tool,
                                "with": _rewrite(call.params)}
        if call.why:
            step["name"] = call.why[:200]
        if call.connection:
            step["connection"] = call.connection
        steps.append(step)
    return {**PLANNING_DEFINITION, "steps": steps}


def step_number(step_id: str) -> int | None:
    """The 1-based plan position of a tool step id (``step_3`` -> 3), else None."""
    if step_id.startswith(TOOL_STEP_PREFIX) and step_id[len(TOOL_STEP_PREFIX):].isdigit():
        return int(step_id[len(TOOL_STEP_PREFIX):])
    return None
