"""The two wire formats of the fake LLM: reading (and checking) a request, writing an answer.

``read_openai`` / ``read_anthropic`` check a request body as strictly as the real APIs do
where a client bug would show (a tool result that answers no tool call, a missing
``max_tokens`` on Anthropic, a ``system`` role inside Anthropic's messages, JSON mode
without the word "json" on OpenAI...) and turn it into one ``Conversation``;
``render_openai`` / ``render_anthropic`` write a ``Reply`` in each API's answer shape,
and ``error_body`` each API's error shape.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")


class WireError(Exception):
    """A request the real API would refuse: ``status`` and a message naming the field."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class ToolDef:
    """A tool offered in the request."""

    name: str
    description: str
    schema: Any


@dataclass
class Conversation:
    """What the fake needs of a request, whichever API it came through."""

    api: str
    model: str
    max_tokens: int | None
    #: Every text the request holds (system, messages, tool calls, tool results): the input tokens.
    texts: list[str] = field(default_factory=list)
    #: The last turn's text when it is a user's text (markers are read from it), else None.
    last_user_text: str | None = None
    #: (tool name, result) of the last turn when it carries tool results.
    tool_results: list[tuple[str, str]] = field(default_factory=list)
    tools: list[ToolDef] = field(default_factory=list)
    #: ("auto" | "none" | "required" | "tool", the tool's name for "tool").
    choice: tuple[str, str | None] = ("auto", None)
    #: None (text), "object" (any JSON object) or "schema" (``schema``).
    json_mode: str | None = None
    schema: Any = None


@dataclass
class Reply:
    """What the fake answers: text (or JSON text), tool calls, and the token counts."""

    text: str | None
    tool_calls: list[tuple[str, dict[str, Any]]]
    truncated: bool
    tokens_in: int
    tokens_out: int


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise WireError(400, f"{where}[{index}]: expected a text part")
            parts.append(part["text"])
        return "".join(parts)
    raise WireError(400, f"{where}: expected a string or a list of text parts")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WireError(400, f"{where}: expected an integer of at least 1, got {value!r}")
    return value


def _temperature(value: Any, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise WireError(400, f"temperature: expected a number from 0 to {high:g}, got {value!r}")


def read_openai(body: Any) -> Conversation:
    """Check a Chat Completions body and read it.

    Raises:
        WireError: what OpenAI would answer 400 to (the message names the field).
    """
    if not isinstance(body, dict):
        raise WireError(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError(400, "model: you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: expected a non-empty array")
    max_tokens = None
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body:
            max_tokens = _positive_int(body[key], key)
    _temperature(body.get("temperature"), 2.0)
    conv = Conversation("openai", model, max_tokens)
    call_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _OPENAI_ROLES:
            raise WireError(400, f"{where}.role: expected one of {', '.join(_OPENAI_ROLES)}")
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in call_names:
                raise WireError(
                    400,
                    f"{where}: messages with role 'tool' must be a response to a preceding message with 'tool_calls' "
                    f"(tool_call_id {call_id!r})",
                )
            conv.texts.append(_text_of(message.get("content"), f"{where}.content"))
            continue
        if role == "assistant":
            raw_content = message.get("content")
            if raw_content is not None:
                conv.texts.append(_text_of(raw_content, f"{where}.content"))
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise WireError(400, f"{where}.tool_calls: expected an array")
            for number, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if (
                    not isinstance(function, dict)
                    or call.get("type") != "function"
                    or not isinstance(call.get("id"), str)
                    or not isinstance(function.get("name"), str)
                    or not isinstance(function.get("arguments"), str)
                ):
                    raise WireError(400, f"{where}.tool_calls[{number}]: expected id, type function, function.name and function.arguments (a string)")
                call_names[call["id"]] = function["name"]
                conv.texts.append(function["arguments"])
            if raw_content is None and not calls:
                raise WireError(400, f"{where}: an assistant message needs content or tool_calls")
            continue
        conv.texts.append(_text_of(message.get("content"), f"{where}.content"))
    last = messages[-1]
    if last["role"] == "tool":
        tail = []
        for message in reversed(messages):
            if message["role"] != "tool":
                break
            tail.append((call_names[message["tool_call_id"]], _text_of(message["content"], "content")))
        conv.tool_results = list(reversed(tail))
    elif last["role"] == "user":
        conv.last_user_text = _text_of(last.get("content"), "content")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise WireError(400, "tools: expected an array")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise WireError(400, f"tools[{index}]: expected {{type: function, function: {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise WireError(400, f"tools[{index}].function.name: {name!r} does not match '^[a-zA-Z0-9_-]{{1,64}}$'")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise WireError(400, f"tools[{index}].function.parameters: expected an object")
        conv.tools.append(ToolDef(name, str(function.get("description") or ""), parameters))
    choice = body.get("tool_choice")
    names = {tool.name for tool in conv.tools}
    if choice in ("auto", "none", "required"):
        if choice == "required" and not conv.tools:
            raise WireError(400, "tool_choice: 'required' is only allowed when 'tools' are specified")
        conv.choice = (choice, None)
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name not in names:
            raise WireError(400, f"tool_choice: function {name!r} is not among the tools")
        conv.choice = ("tool", name)
    elif choice is not None:
        raise WireError(400, f"tool_choice: {choice!r} is not none, auto, required or a named function")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            everything = " ".join(conv.texts) + " " + " ".join(
                str(m.get("content") or "") for m in messages if m.get("role") in ("system", "developer")
            )
            if "json" not in everything.lower():
                raise WireError(
                    400,
                    "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                )
            conv.json_mode = "object"
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not _TOOL_NAME.match(spec["name"]):
                raise WireError(400, "response_format.json_schema.name: required, '^[a-zA-Z0-9_-]{1,64}$'")
            if not isinstance(spec.get("schema"), dict):
                raise WireError(400, "response_format.json_schema.schema: expected an object")
            conv.json_mode, conv.schema = "schema", spec["schema"]
        elif kind != "text":
            raise WireError(400, f"response_format.type: {kind!r} is not text, json_object or json_schema")
    for tool in conv.tools:
        conv.texts.append(f"{tool.name} {tool.description} {json.dumps(tool.schema)}")
    return conv


def _anthropic_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content:
            raise WireError(400, f"{where}: text content blocks must be non-empty")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise WireError(400, f"{where}: expected a non-empty string or a non-empty list of content blocks")
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise WireError(400, f"{where}[{index}].text: text content blocks must be non-empty")
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) or not isinstance(block.get("input"), dict):
                raise WireError(400, f"{where}[{index}]: tool_use needs id, name and an object input")
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise WireError(400, f"{where}[{index}].tool_use_id: required")
        else:
            raise WireError(400, f"{where}[{index}].type: {kind!r} is not text, tool_use or tool_result")
    return content


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def read_anthropic(body: Any) -> Conversation:
    """Check a Messages body and read it.

    Raises:
        WireError: what Anthropic would answer 400 to (the message names the field).
    """
    if not isinstance(body, dict):
        raise WireError(400, "The request body is not valid JSON.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError(400, "model: Field required")
    if "max_tokens" not in body:
        raise WireError(400, "max_tokens: Field required")
    max_tokens = _positive_int(body["max_tokens"], "max_tokens")
    _temperature(body.get("temperature"), 1.0)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError(400, "messages: Field required (a non-empty list)")
    conv = Conversation("anthropic", model, max_tokens)
    system = body.get("system")
    if system is not None:
        conv.texts.append(_text_of(system, "system"))
    previous_uses: dict[str, str] = {}
    turns: list[list[dict[str, Any]]] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise WireError(400, f"{where}.role: Unexpected role {role!r}. Allowed roles are 'user' or 'assistant'; use the top-level system parameter for a system prompt")
        blocks = _anthropic_blocks(message.get("content"), f"{where}.content")
        uses: dict[str, str] = {}
        for number, block in enumerate(blocks):
            if block["type"] == "text":
                conv.texts.append(block["text"])
            elif block["type"] == "tool_use":
                if role != "assistant":
                    raise WireError(400, f"{where}.content.{number}: tool_use blocks belong to assistant turns")
                uses[block["id"]] = block["name"]
                conv.texts.append(json.dumps(block["input"]))
            else:
                if role != "user" or block["tool_use_id"] not in previous_uses:
                    raise WireError(
                        400,
                        f"{where}.content.{number}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message.",
                    )
                conv.texts.append(_result_text(block))
        previous_uses = uses
        turns.append(blocks)
    last_role = messages[-1]["role"]
    last = turns[-1]
    if last_role == "user":
        results = [b for b in last if b["type"] == "tool_result"]
        if results:
            names = {}
            for message in messages[:-1]:
                for block in _anthropic_blocks(message["content"], "content"):
                    if block["type"] == "tool_use":
                        names[block["id"]] = block["name"]
            conv.tool_results = [(names.get(b["tool_use_id"], "?"), _result_text(b)) for b in results]
        else:
            conv.last_user_text = "".join(b["text"] for b in last if b["type"] == "text")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise WireError(400, "tools: Input should be a valid list")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise WireError(400, f"tools.{index}: expected an object")
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise WireError(400, f"tools.{index}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise WireError(400, f"tools.{index}.input_schema: Input should be an object schema (type: object)")
        conv.tools.append(ToolDef(name, str(tool.get("description") or ""), schema))
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "none", "tool"):
            raise WireError(400, f"tool_choice.type: {kind!r} is not auto, any, none or tool")
        if kind in ("any", "tool") and not conv.tools:
            raise WireError(400, f"tool_choice: type {kind!r} needs tools")
        if kind == "tool" and choice.get("name") not in {t.name for t in conv.tools}:
            raise WireError(400, f"tool_choice.name: {choice.get('name')!r} is not among the tools")
        conv.choice = ("required" if kind == "any" else kind, choice.get("name") if kind == "tool" else None)
    for tool in conv.tools:
        conv.texts.append(f"{tool.name} {tool.description} {json.dumps(tool.schema)}")
    return conv


def render_openai(reply: Reply, model: str, number: int) -> dict[str, Any]:
    """A Chat Completions answer."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_fake_{number:06d}_{index}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for index, (name, arguments) in enumerate(reply.tool_calls)
        ]
    finish = "tool_calls" if reply.tool_calls else "length" if reply.truncated else "stop"
    return {
        "id": f"chatcmpl-fake-{number:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": reply.tokens_in,
            "completion_tokens": reply.tokens_out,
            "total_tokens": reply.tokens_in + reply.tokens_out,
        },
        "system_fingerprint": "fp_fake",
    }


def render_anthropic(reply: Reply, model: str, number: int) -> dict[str, Any]:
    """A Messages answer."""
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for index, (name, arguments) in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": f"toolu_fake_{number:06d}_{index}", "name": name, "input": arguments})
    stop = "tool_use" if reply.tool_calls else "max_tokens" if reply.truncated else "end_turn"
    return {
        "id": f"msg_fake_{number:06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.tokens_in,
            "output_tokens": reply.tokens_out,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


#: Each API's error type for a status (and for the fake's own kinds).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "overloaded"),
}


def error_body(api: str, status: int, message: str, error_type: str | None = None, request_id: str = "") -> dict[str, Any]:
    """An error body in ``api``'s shape; ``error_type`` overrides the status's usual type."""
    if api == "anthropic":
        kind = error_type or _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    kind, code = _OPENAI_TYPES.get(status, ("server_error", None))
    if error_type:
        kind, code = error_type, error_type
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
