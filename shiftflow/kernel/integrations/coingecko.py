"""The ``coingecko`` integration: CoinGecko's price API, public or with a Demo or Pro key.

Test: ``GET /api/v3/ping`` with the key's header (``x-cg-demo-api-key`` or
``x-cg-pro-api-key``); a refused key fails. Without a key the public API is pinged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.integrations import probe
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, RateLimits, passed
from shiftflow.kernel.integrations.secrets import secret

PLANS = ("demo", "pro")
ROOTS = {"demo": "https://api.coingecko.com", "pro": "https://pro-api.coingecko.com"}
HEADERS = {"demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}

CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "api_key": secret({"type": "string", "minLength": 1, "maxLength": 256,
                           "description": "A Demo or Pro API key; none for the public API."}),
        "plan": {"enum": list(PLANS), "default": "demo"},
        "base_url": {"type": "string", "pattern": r"^https?://[^\s?#]+$", "maxLength": 2048,
                     "description": "A CoinGecko-compatible API root; the plan's own by default."},
    },
    "if": {"properties": {"plan": {"const": "pro"}}, "required": ["plan"]},
    "then": {"required": ["api_key"]},
}


def request_auth(credentials: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(API root, headers) for a call with these credentials."""
    plan = credentials.get("plan") or "demo"
    root = str(credentials.get("base_url") or ROOTS[plan]).rstrip("/")
    headers = {HEADERS[plan]: str(credentials["api_key"])} if credentials.get("api_key") else {}
    return root, headers


def http_credentials(credentials: Mapping[str, Any]) -> dict[str, Any]:
    """The ``http.request`` tool's credentials: the key in the plan's header, the plan's root."""
    root, headers = request_auth(credentials)
    if not headers:
        return {"auth": "none", "base_url": root}
    (name, key), = headers.items()
    return {"auth": "api_key_header", "header_name": name, "api_key": key, "base_url": root}


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """``GET /api/v3/ping``; see the module docstring."""
    root, headers = request_auth(credentials)
    answer = probe.get(f"{root}/api/v3/ping", ctx, headers=headers, refused="CoinGecko refused the API key")
    if answer.status != 200:
        raise ToolError(f"GET {root}/api/v3/ping answered {answer.status}")
    if not headers:
        return passed("CoinGecko's public API answers (no key given)")
    return passed(f"CoinGecko answers with the {credentials.get('plan') or 'demo'} key")


INTEGRATION = Integration(
    key="coingecko",
    name="CoinGecko",
    description="Crypto prices from CoinGecko (public API, or a Demo or Pro key).",
    category="crypto",
    auth_type="API_KEY",
    credentials_schema=CREDENTIALS_SCHEMA,
    test=check,
    tools=("http.request",),
    http_credentials=http_credentials,
    # The Demo plan's documented limit: 30 calls a minute.
    limits=RateLimits(per_minute=30, burst=5),
    base_url=ROOTS["demo"],
    docs_url="https://docs.coingecko.com/reference/introduction",
)
