"""Anthropic's Messages API: ``POST {base_url}/v1/messages``.

The key goes in ``x-api-key`` with ``anthropic-version`` (``2023-06-01`` unless the
connection names another). The system text is a top-level field; tool calls come back as
``tool_use`` content blocks and go back as ``tool_result`` blocks in a user turn
(consecutive results share one turn, as the API requires). Usage is
``usage.input_tokens`` plus the prompt cache's ``cache_creation_input_tokens`` and
``cache_read_input_tokens`` (all input), and ``usage.output_tokens``.

JSON answers: the Messages API has no JSON mode, so a JSON answer is asked for the way
Anthropic documents for every model: one more tool whose input schema is the answer's
schema, and ``tool_choice`` forcing it (``any`` when other tools are offered too, so the
model may call those first). Its input is the answer; it is not reported as a tool call.
A schema whose root is not an object (the tool input must be one) is wrapped as
``{"value": ...}`` and unwrapped from the answer.
"""

from __future__ import annotations

import json
from typing import Any

from shiftflow.kernel.llm.base import (
    Answer,
    ProviderClient,
    ToolNames,
    as_int,
    check_json_answer,
    decode_json_answer,
)
from shiftflow.kernel.llm.errors import InvalidLlmRequest
from shiftflow.kernel.llm.types import Completion, LlmRequest, ResponseFormat, ToolCall

#: stop_reason -> the provider-neutral stop reason.
STOP_REASONS = {
    "end_turn": "end",
    "max_tokens": "max_tokens",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal",
}
DEFAULT_VERSION = "2023-06-01"
_ANSWER_TOOL_DESCRIPTION = "Give your final answer by calling this tool: its input is the answer."


def _answer_schema(response_format: ResponseFormat) -> tuple[dict[str, Any], bool]:
    """The answer tool's input schema, and whether the answer is wrapped in ``value``."""
    if response_format.type == "json_object" or response_format.schema is None:
        return {"type": "object"}, False
    schema = dict(response_format.schema)
    if schema.get("type") == "object":
        return schema, False
    wrapped: dict[str, Any] = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
    for key in ("$defs", "definitions"):  # local $refs must still resolve from the root
        if key in schema:
            wrapped[key] = schema[key]
    return wrapped, True


class AnthropicMessagesClient(ProviderClient):
    """A client of one Anthropic connection (see the module docstring)."""

    provider = "anthropic"
    max_temperature = 1.0
    request_id_header = "request-id"

    def url(self) -> str:
        """``{base_url}/v1/messages``."""
        return self.credentials.base_url + "/v1/messages"

    def headers(self) -> dict[str, str]:
        """``x-api-key``, ``anthropic-version`` and JSON."""
        return {
            "x-api-key": self.credentials.api_key,
            "anthropic-version": self.credentials.options.get("anthropic_version", DEFAULT_VERSION),
            "content-type": "application/json",
            "accept": "application/json",
        }

    def answer_tool(self, request: LlmRequest, names: ToolNames) -> str | None:
        """The wire name of the answer tool when JSON is asked for, else None."""
        if request.response_format is None:
            return None
        name = ToolNames.sanitize(request.response_format.name) or "response"
        if names.taken(name):
            raise InvalidLlmRequest(
                f"response_format.name: {request.response_format.name!r} is also an offered tool's name; "
                "on Anthropic the answer comes as a call of a tool of that name"
            )
        return name

    def build_body(self, request: LlmRequest, names: ToolNames) -> dict[str, Any]:
        """The Messages body."""
        turns: list[dict[str, Any]] = []

        def push(role: str, blocks: list[dict[str, Any]]) -> None:
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})

        for message in request.messages:
            if message.role == "user":
                push("user", [{"type": "text", "text": message.content}])
            elif message.role == "assistant":
                blocks: list[dict[str, Any]] = []
                if message.content:
                    blocks.append({"type": "text", "text": message.content})
                for call in message.tool_calls:
                    arguments = call.arguments if call.arguments is not None else {}
                    blocks.append({"type": "tool_use", "id": call.id, "name": names.wire(call.name), "input": arguments})
                push("assistant", blocks)
            else:
                result: dict[str, Any] = {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id,
                    "content": message.content,
                }
                if message.is_error:
                    result["is_error"] = True
                push("user", [result])
        body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": turns}
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        tools = [
            {"name": names.wire(tool.name), "description": tool.description, "input_schema": dict(tool.parameters)}
            for tool in request.tools
        ]
        choice = request.tool_choice
        tool_choice: dict[str, Any] | None = None
        if choice == "auto":
            tool_choice = {"type": "auto"}
        elif choice == "required":
            tool_choice = {"type": "any"}
        elif choice == "none":
            tool_choice = {"type": "none"}
        elif choice is not None:
            tool_choice = {"type": "tool", "name": names.wire(choice)}
        answer_tool = self.answer_tool(request, names)
        if answer_tool is not None and request.response_format is not None:
            if choice == "none":
                raise InvalidLlmRequest(
                    "tool_choice: none cannot be combined with response_format on Anthropic "
                    "(the JSON answer comes as a tool call)"
                )
            schema, _ = _answer_schema(request.response_format)
            tools.append({"name": answer_tool, "description": _ANSWER_TOOL_DESCRIPTION, "input_schema": schema})
            if choice is None or choice in ("auto", "required"):
                tool_choice = {"type": "any"} if request.tools else {"type": "tool", "name": answer_tool}
        if tools:
            body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        return body

    def read_answer(self, request: LlmRequest, names: ToolNames, data: dict[str, Any], answer: Answer) -> Completion:
        """The content blocks of a Messages answer."""
        response_format = request.response_format
        answer_tool = self.answer_tool(request, names)
        texts: list[str] = []
        calls: list[ToolCall] = []
        answered: Any = None
        has_answer = False
        for block in data["content"]:
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "tool_use":
                value = block.get("input")
                if answer_tool is not None and block.get("name") == answer_tool:
                    answered, has_answer = value, True
                    continue
                arguments = value if isinstance(value, dict) else None
                calls.append(ToolCall(str(block.get("id") or ""), names.local(str(block["name"])), arguments, json.dumps(value)))
        text = "".join(texts)
        raw_stop = data.get("stop_reason")
        stop = STOP_REASONS.get(raw_stop, "other") if isinstance(raw_stop, str) else "other"
        parsed: Any = None
        json_error: str | None = None
        if response_format is not None:
            if has_answer:
                _, wrapped = _answer_schema(response_format)
                parsed = answered.get("value") if wrapped and isinstance(answered, dict) else answered
                json_error = check_json_answer(parsed, response_format)
                text = json.dumps(parsed, ensure_ascii=False)
                if stop == "tool_use" and not calls:
                    stop = "end"  # the answer tool was the whole answer
            elif not calls:
                parsed, json_error = decode_json_answer(text, response_format)
        usage = data.get("usage")
        tokens_in = tokens_out = 0
        if isinstance(usage, dict):
            tokens_in = (
                as_int(usage.get("input_tokens"))
                + as_int(usage.get("cache_creation_input_tokens"))
                + as_int(usage.get("cache_read_input_tokens"))
            )
            tokens_out = as_int(usage.get("output_tokens"))
        return Completion(
            text=text,
            parsed=parsed,
            json_error=json_error,
            tool_calls=tuple(calls),
            stop_reason=stop,
            provider_stop_reason=raw_stop if isinstance(raw_stop, str) else None,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usage_reported=isinstance(usage, dict),
            latency=answer.latency,
            model=str(data.get("model") or request.model),
            request_id=answer.headers.get(self.request_id_header),
            response_id=data.get("id") if isinstance(data.get("id"), str) else None,
            provider=self.provider,
        )
