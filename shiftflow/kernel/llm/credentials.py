"""A provider connection's credentials, read from the plain dict a connection stores.

The dict comes decrypted from the connection store (or a test); it is checked here so
that a missing or misspelt field is a clear error naming the field, never a confusing
401 from the provider. The API key never appears in ``repr``, messages or logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shiftflow.kernel.llm.errors import InvalidCredentials

#: The fields a connection may hold, per provider (anything else is refused, so that a
#: misspelt ``base_ur1`` is an error instead of a call to the default host).
FIELDS: dict[str, frozenset[str]] = {
    "openai": frozenset({"api_key", "base_url", "organization", "project", "max_tokens_param"}),
    "anthropic": frozenset({"api_key", "base_url", "anthropic_version"}),
}

#: Where each provider is when ``base_url`` is not given. OpenAI-compatible base URLs end
#: in ``/v1`` (the request goes to ``{base_url}/chat/completions``, as with OpenAI's own
#: SDK and most compatible servers); Anthropic's do not (``{base_url}/v1/messages``).
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


@dataclass(frozen=True)
class Credentials:
    """Checked credentials of one provider connection.

    Attributes:
        provider: ``openai`` or ``anthropic``.
        api_key: the secret (hidden from ``repr``).
        base_url: the API root, without a trailing slash.
        options: the other fields (``organization``, ``project``, ``anthropic_version``,
            ``max_tokens_param``), as strings.
    """

    provider: str
    api_key: str = field(repr=False)
    base_url: str
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, provider: str, data: Mapping[str, Any]) -> Credentials:
        """Check a connection's dict and build the credentials.

        Raises:
            InvalidCredentials: an unknown provider, a missing or empty ``api_key``, a field
                that is not a string, an unknown field, a ``base_url`` that is not http(s).
                The message names the field, never its value (except ``base_url``'s scheme).
        """
        if provider not in FIELDS:
            raise InvalidCredentials(f"provider {provider!r} is unknown: expected one of {', '.join(FIELDS)}")
        if not isinstance(data, Mapping):
            raise InvalidCredentials(f"{provider} credentials: expected an object with api_key")
        unknown = sorted(set(data) - FIELDS[provider])
        if unknown:
            raise InvalidCredentials(
                f"{provider} credentials: unknown field {unknown[0]!r}; expected {', '.join(sorted(FIELDS[provider]))}"
            )
        for name, value in data.items():
            if value is not None and not isinstance(value, str):
                raise InvalidCredentials(f"{provider} credentials: {name} must be a string")
        api_key = (data.get("api_key") or "").strip()
        if not api_key:
            raise InvalidCredentials(f"{provider} credentials: api_key is missing")
        base_url = (data.get("base_url") or "").strip() or DEFAULT_BASE_URLS[provider]
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidCredentials(
                f"{provider} credentials: base_url must be an http(s) URL with a host (got scheme {parts.scheme!r})"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise InvalidCredentials(f"{provider} credentials: base_url must not have a query, fragment or user info")
        options = {k: v.strip() for k, v in data.items() if k not in ("api_key", "base_url") and v and v.strip()}
        if options.get("max_tokens_param", "max_tokens") not in ("max_tokens", "max_completion_tokens"):
            raise InvalidCredentials(
                f"{provider} credentials: max_tokens_param must be max_tokens or max_completion_tokens"
            )
        return cls(provider, api_key, base_url.rstrip("/"), options)
