"""The ``llm`` step: build the request (inline, or from a stored prompt's published version),
call the model through ``llm_calls.call_llm``, validate the output, ask again with the
reasons when it fails, and return the step's output.

Two forms (``kernel.definition``):

* **inline**: ``model``, ``system``, ``messages`` or ``prompt`` text, ``temperature``,
  ``max_tokens``, ``response_format`` (``json`` or ``{json_schema: ...}``), ``tools``,
  ``tool_choice``; the step's ``connection``.
* **stored prompt**: ``prompt`` (a name or an id), ``version`` (a number or
  ``published``, the default), ``variables``. The version must be PUBLISHED; its
  variables are checked and its template rendered in Jinja2's sandbox; its ``config``
  holds the model settings and its prompt's active validations apply. The step's
  ``connection`` overrides the version's.

**Validation.** A JSON answer that is not JSON, or does not match the asked schema, and
any validation of the prompt that fails, are fed back to the model ("your answer failed
validation: ...") and the call is made again, up to ``max_validation_retries`` of the
version (else ``SHIFTFLOW_LLM_VALIDATION_RETRIES``) more times; then the step fails,
listing the reasons. Each call is its own ``llm_call`` row (``call_key`` ``v1``, ``v2``...),
with its validation status, errors and validated output, so a redelivered step replays the
calls it already paid for instead of repeating them.

Output: ``text``, ``json`` (the parsed answer), ``validated`` (what passed validation),
``tool_calls``, ``usage`` (tokens of every attempt), ``cost_usd`` (every attempt),
``attempts``, ``model``, ``provider``, ``latency_ms``, ``validation`` (status and errors),
``call_id`` (the last call's row).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shiftflow.kernel.definition import Step
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.llm import LlmRequest, Message, ResponseFormat, Tool
from shiftflow.kernel.prompts import PromptError, Validation, render, resolve, validate_output
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.models.engine import llm_calls, runs
from shiftflow.models.tables.prompts import Prompt, PromptValidation, PromptVersion

#: Most validation retries a version may ask for.
MAX_VALIDATION_RETRIES = 10


class OutputInvalid(PermanentError):
    """Raised when the output still fails validation after the last retry (reasons listed)."""

    def __init__(self, message: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


@dataclass
class Plan:
    """What to ask, through which connection, and how to check the answer."""

    connection: str
    request: LlmRequest
    validations: list[Validation] = field(default_factory=list)
    retries: int = 2
    prompt_id: Any = None
    version_id: Any = None
    variables: dict[str, Any] = field(default_factory=dict)


def response_format(value: Any, where: str) -> ResponseFormat | None:
    """``json``, ``text`` or ``{json_schema, name?, strict?}`` as a ``ResponseFormat``."""
    if value in (None, "text"):
        return None
    if value == "json":
        return ResponseFormat.json()
    if isinstance(value, Mapping) and isinstance(value.get("json_schema"), Mapping):
        return ResponseFormat.json_schema(value["json_schema"], name=str(value.get("name") or "response"),
                                          strict=bool(value.get("strict", False)))
    raise PromptError(where, "expected json, text or {json_schema: {...}}")


def tools_of(value: Any, where: str) -> tuple[Tool, ...]:
    """A step's or version's ``tools`` list as ``Tool``s."""
    if not value:
        return ()
    if not isinstance(value, list):
        raise PromptError(where, "expected a list of {name, description, parameters}")
    out = []
    for n, item in enumerate(value):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise PromptError(f"{where}[{n}]", "expected {name, description, parameters}")
        out.append(Tool(item["name"], str(item.get("description") or ""),
                        dict(item.get("parameters") or {"type": "object", "properties": {}})))
    return tuple(out)


def _number(value: Any, where: str, kind: type, default: Any) -> Any:
    """A rendered number (a reference renders to text or a number)."""
    if value is None:
        return default
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise PromptError(where, f"expected a {'number' if kind is float else 'whole number'}, got {value!r}") from None


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise PromptError(where, "expected a list of {role: user|assistant, content}")
    out = []
    for n, item in enumerate(value):
        if not isinstance(item, Mapping) or item.get("role") not in ("user", "assistant") \
                or not isinstance(item.get("content"), str):
            raise PromptError(f"{where}[{n}]", "expected {role: user|assistant, content: text}")
        out.append(Message.user(item["content"]) if item["role"] == "user" else Message.assistant(item["content"]))
    return tuple(out)


def inline_plan(step: Step, inputs: Mapping[str, Any], where: str, settings: Settings) -> Plan:
    """The plan of an inline ``llm`` step from its rendered inputs."""
    if "messages" in inputs:
        messages = _messages(inputs["messages"], f"{where}.messages")
    else:
        messages = (Message.user(str(inputs.get("prompt", ""))),)
    system = inputs.get("system")
    request = LlmRequest(
        model=str(inputs["model"]), messages=messages, system=None if system is None else str(system),
        temperature=_number(inputs.get("temperature"), f"{where}.temperature", float, None),
        max_tokens=_number(inputs.get("max_tokens"), f"{where}.max_tokens", int, 1024),
        response_format=response_format(inputs.get("response_format"), f"{where}.response_format"),
        tools=tools_of(inputs.get("tools"), f"{where}.tools"), tool_choice=inputs.get("tool_choice"))
    return Plan(str(step.connection or ""), request, retries=settings.llm_validation_retries)


def find_prompt(workspace_id: Any, ref: Any) -> Prompt:
    """The workspace's prompt named (or with the id) ``ref``.

    Raises:
        PromptError: no such prompt (``prompt: no prompt 'x' in this workspace``).
    """
    ref = str(ref)
    where = (Prompt.workspace == workspace_id)
    try:
        found = Prompt.get_or_none(where & (Prompt.id == uuid.UUID(ref)))
    except ValueError:
        found = None
    found = found or Prompt.get_or_none(where & (Prompt.name == ref))
    if found is None:
        raise PromptError("prompt", f"no prompt {ref!r} in this workspace")
    return found


def runnable_version(prompt: Prompt, version: Any) -> PromptVersion:
    """The version a run uses: the published one, or the numbered one if it is published.

    Raises:
        PromptError: the prompt is archived, has no published version, or the numbered
            version is missing or not PUBLISHED (only a published version runs).
    """
    if prompt.status == "ARCHIVED":
        raise PromptError("prompt", f"prompt {prompt.name!r} is archived")
    if version in (None, "", "published"):
        found = (PromptVersion.select().where((PromptVersion.prompt == prompt.id)
                                              & (PromptVersion.status == "PUBLISHED"))
                 .order_by(PromptVersion.version.desc()).first())
        if found is None:
            raise PromptError("version", f"prompt {prompt.name!r} has no published version: publish one first")
        return found
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise PromptError("version", f"expected a version number or 'published', got {version!r}") from None
    found = PromptVersion.get_or_none((PromptVersion.prompt == prompt.id) & (PromptVersion.version == number))
    if found is None:
        raise PromptError("version", f"prompt {prompt.name!r} has no version {number}")
    if found.status != "PUBLISHED":
        raise PromptError("version", f"version {number} of prompt {prompt.name!r} is {found.status}: "
                                     "only a published version runs (publish it first)")
    return found


def active_validations(prompt_id: Any) -> list[Validation]:
    """A prompt's active validations, oldest first."""
    rows = (PromptValidation.select().where((PromptValidation.prompt == prompt_id)
                                            & (PromptValidation.is_active == True))  # noqa: E712
            .order_by(PromptValidation.created_at, PromptValidation.name))
    return [Validation(r.name, r.type, dict(r.config or {})) for r in rows]


def build_request(version: PromptVersion, variables: Mapping[str, Any], timeout: float | None = None) -> LlmRequest:
    """A version's request for ``variables`` (already resolved): its template and system
    text rendered in the sandbox, its model settings from ``config``."""
    config = dict(version.config or {})
    system = config.get("system")
    return LlmRequest(
        model=str(config.get("model") or ""),
        messages=(Message.user(render(version.template, variables)),),
        system=None if system is None else render(str(system), variables, "config.system"),
        temperature=config.get("temperature"), max_tokens=int(config.get("max_tokens") or 1024),
        response_format=response_format(config.get("response_format"), "config.response_format"),
        tools=tools_of(config.get("tools"), "config.tools"), tool_choice=config.get("tool_choice"),
        timeout=timeout)


def stored_plan(workspace_id: Any, step: Step, inputs: Mapping[str, Any], settings: Settings) -> Plan:
    """The plan of a stored-prompt ``llm`` step: its published version, variables checked."""
    prompt = find_prompt(workspace_id, inputs["prompt"])
    version = runnable_version(prompt, inputs.get("version"))
    variables = resolve(list(version.variables or []), inputs.get("variables"))
    config = dict(version.config or {})
    connection = step.connection or config.get("connection")
    if not connection:
        raise PromptError("connection", f"neither the step nor version {version.version} of prompt "
                                        f"{prompt.name!r} names a connection")
    retries = config.get("max_validation_retries", settings.llm_validation_retries)
    return Plan(str(connection), build_request(version, variables), active_validations(prompt.id),
                min(int(retries), MAX_VALIDATION_RETRIES), prompt.id, version.id, variables)


def feedback(reasons: list[str]) -> str:
    """The message that asks the model again after a failed validation."""
    listed = "\n".join(f"- {r}" for r in reasons)
    return f"Your answer failed validation:\n{listed}\nAnswer again, fixing these problems. Reply with the answer only."


def execute(plan: Plan, *, workspace_id: Any, execution_id: Any, step_execution_id: Any,
            timeout: float | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Call the model for ``plan``, validating and asking again as the module docstring says.

    Raises:
        OutputInvalid: still invalid after the last retry (the reasons listed).
        and what ``llm_calls.call_llm`` raises.
    """
    settings = settings or get_settings()
    request = plan.request
    checks = bool(plan.validations) or request.response_format is not None
    tokens_in = tokens_out = 0
    total: Decimal | None = Decimal(0)
    reasons: list[str] = []

    def judge(c: Any) -> llm_calls.Checked:
        if c.tool_calls or not checks:
            return llm_calls.Checked("SKIPPED", c.parsed if c.parsed is not None else c.text)
        found = [f"response_format: {c.json_error}"] if c.json_error else []
        value, more = validate_output(c.text, c.parsed, plan.validations)
        found += more
        return llm_calls.Checked("FAILED" if found else "PASSED", value, tuple(found))

    for attempt in range(1, plan.retries + 2):
        result = llm_calls.call_llm(workspace_id, plan.connection, request, execution_id=execution_id,
                                    step_execution_id=step_execution_id, call_key=f"v{attempt}",
                                    prompt_id=plan.prompt_id, prompt_version_id=plan.version_id,
                                    inputs=plan.variables, timeout=timeout, settings=settings, check=judge)
        c = result.completion
        tokens_in, tokens_out = tokens_in + c.tokens_in, tokens_out + c.tokens_out
        total = None if total is None or result.cost is None else total + result.cost
        verdict = result.checked
        status, validated, reasons = verdict.status, verdict.validated, list(verdict.errors)
        if status != "FAILED":
            out = result.output()
            out.update(validated=validated, attempts=attempt,
                       usage={"input": tokens_in, "output": tokens_out, "total": tokens_in + tokens_out},
                       cost_usd=None if total is None else format(total, "f"),
                       validation={"status": status, "errors": []},
                       prompt_version_id=None if plan.version_id is None else str(plan.version_id))
            return out
        request = dataclasses.replace(request, messages=(*request.messages, Message.assistant(c.text),
                                                         Message.user(feedback(reasons))))
    listed = "; ".join(reasons)
    raise OutputInvalid(f"the output failed validation after {plan.retries + 1} attempts: {listed}", reasons)


def run(claim: runs.Claim, step: Step, inputs: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Run one ``llm`` step (called by the step loop; its errors take the usual paths:
    permanent fails the step, ``RateLimited`` parks it for the provider's wait)."""
    settings = settings or get_settings()
    assert claim.step is not None
    index = [s.id for s in claim.definition.steps].index(step.id)
    where = f"steps[{index}]"
    execution = claim.execution
    try:
        if "model" in inputs:
            plan = inline_plan(step, inputs, where, settings)
        else:
            plan = stored_plan(execution.workspace_id, step, inputs, settings)
    except PromptError as exc:
        field_path = exc.field if exc.field.startswith("steps[") else f"{where}.{exc.field}"
        raise PromptError(field_path, exc.reason) from None
    return execute(plan, workspace_id=execution.workspace_id, execution_id=execution.id,
                   step_execution_id=claim.step.id, timeout=step.timeout, settings=settings)
