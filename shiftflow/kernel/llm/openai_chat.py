"""OpenAI-compatible Chat Completions: ``POST {base_url}/chat/completions``.

Speaks OpenAI's wire format, which many servers share (vLLM, Ollama, OpenRouter, Azure's
``/openai/v1``...). The key goes in ``Authorization: Bearer``; ``organization`` and
``project`` become ``OpenAI-Organization`` / ``OpenAI-Project``. JSON answers use
``response_format`` (``json_object``, or ``json_schema`` with ``strict`` as asked); tools
are ``{"type": "function"}`` entries and the model's calls come back in
``message.tool_calls`` with their arguments as JSON text. Usage is
``usage.prompt_tokens`` / ``usage.completion_tokens``.

The answer length limit is sent as ``max_completion_tokens`` to OpenAI itself (its
reasoning models refuse ``max_tokens``) and as ``max_tokens`` to any other server (what
compatible servers have long understood); a connection's ``max_tokens_param`` overrides.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from shiftflow.kernel.llm.base import (
    Answer,
    ProviderClient,
    ToolNames,
    as_int,
    decode_json_answer,
    parse_arguments,
)
from shiftflow.kernel.llm.types import Completion, LlmRequest, ToolCall

#: finish_reason -> the provider-neutral stop reason.
STOP_REASONS = {
    "stop": "end",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
OPENAI_HOST = "api.openai.com"


class OpenAIChatClient(ProviderClient):
    """A client of one OpenAI-compatible connection (see the module docstring)."""

    provider = "openai"
    max_temperature = 2.0
    request_id_header = "x-request-id"

    def url(self) -> str:
        """``{base_url}/chat/completions``."""
        return self.credentials.base_url + "/chat/completions"

    def headers(self) -> dict[str, str]:
        """Bearer key, JSON, and the organization/project headers when set."""
        out = {
            "authorization": f"Bearer {self.credentials.api_key}",
            "content-type": "application/json",
            "accept": "application/json",
        }
        if "organization" in self.credentials.options:
            out["openai-organization"] = self.credentials.options["organization"]
        if "project" in self.credentials.options:
            out["openai-project"] = self.credentials.options["project"]
        return out

    def max_tokens_param(self) -> str:
        """``max_completion_tokens`` for OpenAI itself, ``max_tokens`` elsewhere, unless the connection says."""
        chosen = self.credentials.options.get("max_tokens_param")
        if chosen:
            return chosen
        host = urlsplit(self.credentials.base_url).hostname
        return "max_completion_tokens" if host == OPENAI_HOST else "max_tokens"

    def build_body(self, request: LlmRequest, names: ToolNames) -> dict[str, Any]:
        """The Chat Completions body."""
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        for message in request.messages:
            if message.role == "user":
                messages.append({"role": "user", "content": message.content})
            elif message.role == "assistant":
                turn: dict[str, Any] = {"role": "assistant", "content": message.content or None}
                if message.tool_calls:
                    turn["tool_calls"] = [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": names.wire(call.name),
                                "arguments": call.arguments_text or json.dumps(call.arguments or {}),
                            },
                        }
                        for call in message.tool_calls
                    ]
                messages.append(turn)
            else:
                # Chat Completions has no error flag on a tool result: say it in the text.
                content = f"error: {message.content}" if message.is_error else message.content
                messages.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": content})
        body: dict[str, Any] = {"model": request.model, "messages": messages, self.max_tokens_param(): request.max_tokens}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        response_format = request.response_format
        if response_format is not None:
            if response_format.type == "json_object":
                body["response_format"] = {"type": "json_object"}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": ToolNames.sanitize(response_format.name) or "response",
                        "schema": dict(response_format.schema or {}),
                        "strict": response_format.strict,
                    },
                }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": names.wire(tool.name),
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
                for tool in request.tools
            ]
        choice = request.tool_choice
        if choice in ("auto", "none", "required"):
            body["tool_choice"] = choice
        elif choice is not None:
            body["tool_choice"] = {"type": "function", "function": {"name": names.wire(choice)}}
        return body

    def read_answer(self, request: LlmRequest, names: ToolNames, data: dict[str, Any], answer: Answer) -> Completion:
        """The first choice of a Chat Completions answer."""
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
        if isinstance(content, list):  # some compatible servers send content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        text = content if isinstance(content, str) else ""
        calls = []
        for raw in message.get("tool_calls") or ():
            function = raw["function"]
            arguments_text = function.get("arguments") or ""
            if not isinstance(arguments_text, str):  # a few servers send an object
                arguments_text = json.dumps(arguments_text)
            calls.append(ToolCall(str(raw.get("id") or ""), names.local(function["name"]), parse_arguments(arguments_text), arguments_text))
        finish = choice.get("finish_reason")
        stop = STOP_REASONS.get(finish, "other") if isinstance(finish, str) else "other"
        refusal = message.get("refusal")
        if refusal:
            stop = "refusal"
        # A turn of tool calls is not the answer yet: its JSON is read in the turn that answers.
        parsed, json_error = decode_json_answer(text, request.response_format) if not calls else (None, None)
        if refusal and request.response_format is not None:
            parsed, json_error = None, f"the model refused: {refusal}"
        usage = data.get("usage")
        return Completion(
            text=text,
            parsed=parsed,
            json_error=json_error,
            tool_calls=tuple(calls),
            stop_reason=stop,
            provider_stop_reason=finish if isinstance(finish, str) else None,
            tokens_in=as_int(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0,
            tokens_out=as_int(usage.get("completion_tokens")) if isinstance(usage, dict) else 0,
            usage_reported=isinstance(usage, dict),
            latency=answer.latency,
            model=str(data.get("model") or request.model),
            request_id=answer.headers.get(self.request_id_header),
            response_id=data.get("id") if isinstance(data.get("id"), str) else None,
            provider=self.provider,
        )
