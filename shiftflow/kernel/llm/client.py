"""The one interface of an LLM call, and the factory of provider clients.

    client = make_client("anthropic", {"api_key": key}, timeout=60)
    completion = client.complete(LlmRequest(model="claude-haiku-4-5", messages=(Message.user("Hi"),)))
    completion.text, completion.tokens_in, completion.tokens_out, completion.latency

Every provider client has ``complete(request) -> Completion`` and ``close()``; see
``shiftflow.kernel.llm.base.ProviderClient`` for the errors it raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from shiftflow.kernel.llm.anthropic_messages import AnthropicMessagesClient
from shiftflow.kernel.llm.base import DEFAULT_TIMEOUT, ProviderClient
from shiftflow.kernel.llm.errors import InvalidCredentials
from shiftflow.kernel.llm.openai_chat import OpenAIChatClient
from shiftflow.kernel.llm.types import Completion, LlmRequest

#: Provider name (as a connection's integration names it) -> client class.
PROVIDERS: dict[str, type[ProviderClient]] = {
    "openai": OpenAIChatClient,
    "anthropic": AnthropicMessagesClient,
}


class LlmClient(Protocol):
    """What the engine needs of any LLM client (a provider client, or a test double in unit tests)."""

    provider: str

    def complete(self, request: LlmRequest) -> Completion:
        """Send ``request`` and return the answer, or raise an ``LlmError``/``InvalidLlmRequest``."""
        ...

    def close(self) -> None:
        """Release the client's connections."""
        ...


def make_client(
    provider: str,
    credentials: Mapping[str, Any],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    allow_private: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> ProviderClient:
    """A client for ``provider`` with a connection's credentials.

    Parameters:
        provider: ``openai`` (any OpenAI-compatible server) or ``anthropic``.
        credentials: ``api_key`` (required), ``base_url``, and the provider's options
            (``organization``/``project``/``max_tokens_param``; ``anthropic_version``).
        timeout: the deadline of calls whose request names none (``SHIFTFLOW_LLM_TIMEOUT_SECONDS``).
        allow_private: allow a base URL on loopback or a private network (``SHIFTFLOW_HTTP_ALLOW_PRIVATE``).
        transport: an ``httpx`` transport for tests.

    Raises:
        InvalidCredentials: an unknown provider, or credentials lacking or misspelling a field.
    """
    try:
        cls = PROVIDERS[provider]
    except KeyError:
        raise InvalidCredentials(f"provider {provider!r} is unknown: expected one of {', '.join(PROVIDERS)}") from None
    return cls(credentials, timeout=timeout, allow_private=allow_private, transport=transport)
