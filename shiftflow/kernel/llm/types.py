"""What an LLM call is asked and what it answers, the same for every provider.

An ``LlmRequest`` holds the model, the system text, the conversation (user and assistant
messages, tool calls the model made and the results fed back), sampling limits, an
optional JSON answer format, the tools offered and the deadline of the call. A provider
client turns it into its own wire format and turns the answer into a ``Completion``.
Everything here is plain, frozen data: no I/O, safe to share between threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: Who speaks in a message. A ``tool`` message carries the result of one tool call.
Role = Literal["user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("user", "assistant", "tool")

#: Why the model stopped, the same words for every provider:
#: ``end`` (finished its answer), ``max_tokens`` (cut at the limit), ``tool_use``
#: (asks for tool calls), ``stop_sequence``, ``refusal`` (declined, or a content filter),
#: ``other`` (anything else; ``Completion.provider_stop_reason`` has the provider's word).
STOP_REASONS: tuple[str, ...] = ("end", "max_tokens", "tool_use", "stop_sequence", "refusal", "other")


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool that the model asked for.

    Attributes:
        id: the provider's id of the call; a tool result answers it by this id.
        name: the tool's name, as offered in ``LlmRequest.tools``.
        arguments: the arguments, decoded from JSON; None when the model sent text that
            is not a JSON object (``arguments_text`` has it, for the error message).
        arguments_text: the arguments as the model wrote them (JSON text).
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    arguments_text: str


@dataclass(frozen=True)
class Message:
    """One turn of the conversation.

    Build with ``Message.user``, ``Message.assistant`` or ``Message.tool_result``.

    Attributes:
        role: ``user``, ``assistant`` or ``tool``.
        content: the text (for a tool message: the tool's result, as text or JSON text).
        tool_calls: the calls an assistant message made (to replay a conversation).
        tool_call_id: for a tool message, the id of the call it answers.
        is_error: for a tool message, the tool failed and ``content`` says why.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False

    @classmethod
    def user(cls, text: str) -> Message:
        """A user message."""
        return cls("user", text)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        """An assistant message (an earlier answer), with the tool calls it made."""
        return cls("assistant", text, tuple(tool_calls))

    @classmethod
    def tool_result(cls, call_id: str, content: str, *, is_error: bool = False) -> Message:
        """The result of the tool call ``call_id``, fed back to the model."""
        return cls("tool", content, tool_call_id=call_id, is_error=is_error)


@dataclass(frozen=True)
class Tool:
    """A tool offered to the model.

    Attributes:
        name: the name the model calls it by. Providers accept letters, digits, ``_``
            and ``-`` only; other characters (``email.send``) are replaced on the wire
            and mapped back in the answer, so callers use their own names throughout.
        description: what the tool does, for the model.
        parameters: JSON Schema of the arguments (an object schema).
    """

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ResponseFormat:
    """Ask for a JSON answer: any JSON object, or one matching a JSON Schema.

    Build with ``ResponseFormat.json()`` or ``ResponseFormat.json_schema(schema)``.

    Attributes:
        type: ``json_object`` or ``json_schema``.
        schema: the JSON Schema of the answer (``json_schema`` only).
        name: a name for the schema (OpenAI's ``json_schema.name``; the name of the
            answer tool on Anthropic).
        strict: OpenAI's strict structured outputs (the schema must then follow OpenAI's
            subset: every property required, ``additionalProperties: false``). Off by
            default so that any schema works; the answer is checked against the schema
            either way (``Completion.json_error``).
    """

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    name: str = "response"
    strict: bool = False

    @classmethod
    def json(cls) -> ResponseFormat:
        """Any JSON object (OpenAI's JSON mode)."""
        return cls("json_object")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any], *, name: str = "response", strict: bool = False) -> ResponseFormat:
        """A JSON value matching ``schema`` (structured output)."""
        return cls("json_schema", schema, name, strict)


@dataclass(frozen=True)
class LlmRequest:
    """One call: what to ask which model, and how long it may take.

    Attributes:
        model: the provider's model name (``gpt-4o-mini``, ``claude-sonnet-4-5``...).
        messages: the conversation, oldest first; the last one is usually the user's.
        system: the system text, if any.
        temperature: sampling temperature; None leaves the provider's default
            (OpenAI accepts 0 to 2, Anthropic 0 to 1).
        max_tokens: the most tokens the answer may have.
        response_format: ask for JSON (see ``ResponseFormat``); None for text.
        tools: tools the model may call.
        tool_choice: ``auto`` (the model decides), ``required`` (it must call one),
            ``none`` (it must not), or the name of one tool it must call; None = auto.
        timeout: the deadline of the whole call in seconds (connect, send, wait, read);
            None uses the client's default.
    """

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int = 1024
    response_format: ResponseFormat | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Completion:
    """The answer of one call, with what it cost in tokens and time.

    Attributes:
        text: the answer's text ("" when the model only called tools). For a JSON
            answer, the JSON text.
        parsed: the decoded JSON answer when ``response_format`` asked for one and the
            text decoded; else None.
        json_error: why the answer is not the JSON that was asked for (not JSON, or not
            matching the schema), None when it is or when no JSON was asked. The call
            itself succeeded (and cost tokens): the caller decides (e.g. ask again with
            the error fed back).
        tool_calls: the tool calls the model asks for, in order.
        stop_reason: why it stopped, one of ``STOP_REASONS``.
        provider_stop_reason: the provider's own word (``stop``, ``end_turn``...).
        tokens_in: input tokens billed (prompt, tools, cached input included).
        tokens_out: output tokens billed.
        usage_reported: False when the provider sent no usage (then both counts are 0
            and the cost is unknown, not zero).
        latency: seconds from sending the request to reading the whole answer.
        model: the model that answered, as the provider named it (often a dated
            snapshot of the model asked for).
        request_id: the provider's request id (``x-request-id`` / ``request-id``
            header), what its support asks for.
        response_id: the id in the answer's body (``chatcmpl-...``, ``msg_...``).
        provider: ``openai`` or ``anthropic``.
    """

    text: str
    parsed: Any
    json_error: str | None
    tool_calls: tuple[ToolCall, ...]
    stop_reason: str
    provider_stop_reason: str | None
    tokens_in: int
    tokens_out: int
    usage_reported: bool
    latency: float
    model: str
    request_id: str | None
    response_id: str | None
    provider: str

    @property
    def latency_ms(self) -> int:
        """Latency in whole milliseconds, rounded up (at least 1: a call always takes time)."""
        return max(1, math.ceil(self.latency * 1000))

    @property
    def tokens_total(self) -> int:
        """Input plus output tokens."""
        return self.tokens_in + self.tokens_out

    def token_usage(self) -> dict[str, Any]:
        """``{"input", "output", "total", "model"}``: the shape of ``llm_call.token_usage``."""
        return {"input": self.tokens_in, "output": self.tokens_out, "total": self.tokens_total, "model": self.model}

    def as_message(self) -> Message:
        """This answer as an assistant message, to continue the conversation (tool round trips)."""
        return Message.assistant(self.text, self.tool_calls)
