"""The ``openai`` and ``anthropic`` integrations: API keys of the LLM providers.

Only what a connection holds is described here: the credentials and the API root. The
clients that call the models live in ``kernel/llm/``; ``llm`` steps and prompt runs reach
them through ``models.engine.llm_calls.call_llm``, which maps these fields onto the
client's (``version`` is ``anthropic_version``; the base URL's ``/v1`` is the client's to
add). A connection of either also serves the ``http.request`` tool (its key goes only to
its ``base_url``).

Test: list the models (``GET <base_url>/models``), which is free, changes nothing and
needs a valid key: OpenAI with ``Authorization: Bearer``, Anthropic with ``x-api-key`` and
``anthropic-version``. A custom ``base_url`` (a compatible server, a proxy) obeys the
HTTP tool's address rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.integrations import probe
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, RateLimits, passed
from shiftflow.kernel.integrations.secrets import secret

OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
#: The ``anthropic-version`` header sent unless the connection names another.
ANTHROPIC_VERSION = "2023-06-01"
_URL = {"type": "string", "pattern": r"^https?://[^\s?#]+$", "maxLength": 2048}

OPENAI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["api_key"],
    "properties": {
        "api_key": secret({"type": "string", "minLength": 1, "maxLength": 512}),
        "organization": {"type": "string", "maxLength": 256, "description": "Sent as OpenAI-Organization."},
        "project": {"type": "string", "maxLength": 256, "description": "Sent as OpenAI-Project."},
        "base_url": {**_URL, "default": OPENAI_BASE_URL,
                     "description": "The API root (an OpenAI-compatible server may be named here)."},
    },
}

ANTHROPIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["api_key"],
    "properties": {
        "api_key": secret({"type": "string", "minLength": 1, "maxLength": 512}),
        "version": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$", "default": ANTHROPIC_VERSION,
                    "description": "Sent as anthropic-version."},
        "base_url": {**_URL, "default": ANTHROPIC_BASE_URL},
    },
}


def openai_headers(credentials: Mapping[str, Any]) -> dict[str, str]:
    """The headers authenticating a call to OpenAI."""
    headers = {"Authorization": f"Bearer {credentials['api_key']}"}
    if credentials.get("organization"):
        headers["OpenAI-Organization"] = str(credentials["organization"])
    if credentials.get("project"):
        headers["OpenAI-Project"] = str(credentials["project"])
    return headers


def anthropic_headers(credentials: Mapping[str, Any]) -> dict[str, str]:
    """The headers authenticating a call to Anthropic."""
    return {"x-api-key": str(credentials["api_key"]),
            "anthropic-version": str(credentials.get("version") or ANTHROPIC_VERSION)}


def openai_http(credentials: Mapping[str, Any]) -> dict[str, Any]:
    """The ``http.request`` tool's credentials for an OpenAI connection."""
    fixed = {k: v for k, v in openai_headers(credentials).items() if k != "Authorization"}
    return {"auth": "bearer", "token": str(credentials["api_key"]), "headers": fixed,
            "base_url": str(credentials.get("base_url") or OPENAI_BASE_URL)}


def anthropic_http(credentials: Mapping[str, Any]) -> dict[str, Any]:
    """The ``http.request`` tool's credentials for an Anthropic connection."""
    return {"auth": "api_key_header", "header_name": "x-api-key", "api_key": str(credentials["api_key"]),
            "headers": {"anthropic-version": str(credentials.get("version") or ANTHROPIC_VERSION)},
            "base_url": str(credentials.get("base_url") or ANTHROPIC_BASE_URL)}


def _models(provider: str, base_url: str, headers: dict[str, str], ctx: CheckContext) -> CheckResult:
    url = base_url.rstrip("/") + "/models"
    answer = probe.get(url, ctx, headers=headers, refused=f"{provider} refused the API key")
    body = probe.json_body(answer)
    if answer.status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ToolError(f"GET {url} answered {answer.status} without a model list")
    return passed(f"{provider} accepted the key and listed {len(body['data'])} models", models=len(body["data"]))


def check_openai(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """List the models with the key."""
    return _models("OpenAI", str(credentials.get("base_url") or OPENAI_BASE_URL), openai_headers(credentials), ctx)


def check_anthropic(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """List the models with the key."""
    return _models("Anthropic", str(credentials.get("base_url") or ANTHROPIC_BASE_URL),
                   anthropic_headers(credentials), ctx)


OPENAI = Integration(
    key="openai",
    name="OpenAI",
    description="OpenAI's API (or an OpenAI-compatible server) for language models.",
    category="ai",
    auth_type="API_KEY",
    credentials_schema=OPENAI_SCHEMA,
    test=check_openai,
    tools=("http.request",),
    http_credentials=openai_http,
    # OpenAI's own limits depend on the account's tier; these keep one workflow from
    # spending a whole tier's minute at once and are meant to be raised per connection.
    limits=RateLimits(per_second=10, per_minute=500, burst=20),
    base_url=OPENAI_BASE_URL,
    docs_url="https://platform.openai.com/docs/api-reference/models/list",
)

ANTHROPIC = Integration(
    key="anthropic",
    name="Anthropic",
    description="Anthropic's API for Claude models.",
    category="ai",
    auth_type="API_KEY",
    credentials_schema=ANTHROPIC_SCHEMA,
    test=check_anthropic,
    tools=("http.request",),
    http_credentials=anthropic_http,
    # The first usage tier's 50 requests a minute; raise per connection for higher tiers.
    limits=RateLimits(per_minute=50, burst=10),
    base_url=ANTHROPIC_BASE_URL,
    docs_url="https://docs.anthropic.com/en/api/models-list",
)
