"""An example integration plugin: ACME CRM, an HTTP API with a key in ``X-Acme-Key``.

Its test is a harmless ``GET /me`` (who the key belongs to). Connections of it serve the
built-in ``http.request`` tool, which puts the key on requests to ``base_url`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.integrations import probe
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, RateLimits, passed
from shiftflow.kernel.integrations.secrets import secret


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """GET /me with the key."""
    answer = probe.get(credentials["base_url"].rstrip("/") + "/me", ctx,
                       headers={"X-Acme-Key": credentials["api_key"]}, refused="ACME refused the key")
    who = probe.json_body(answer)
    if answer.status != 200 or not isinstance(who, dict):
        raise ToolError(f"GET /me answered {answer.status}")
    return passed(f"the key belongs to {who.get('account', '?')}", account=who.get("account"))


def http_credentials(credentials: Mapping[str, Any]) -> dict[str, Any]:
    """How http.request sends the key: in X-Acme-Key, to base_url only."""
    return {"auth": "api_key_header", "header_name": "X-Acme-Key", "api_key": credentials["api_key"],
            "base_url": credentials["base_url"]}


INTEGRATION = Integration(
    key="acme_crm",
    name="ACME CRM",
    description="ACME's CRM API, with an API key.",
    category="crm",
    auth_type="API_KEY",
    credentials_schema={
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url", "api_key"],
        "properties": {
            "base_url": {"type": "string", "pattern": r"^https?://\S+$", "default": "https://api.acme.example"},
            "api_key": secret({"type": "string", "minLength": 8}),
        },
    },
    test=check,
    tools=("http.request",),
    http_credentials=http_credentials,
    limits=RateLimits(per_second=2, burst=4),
)
