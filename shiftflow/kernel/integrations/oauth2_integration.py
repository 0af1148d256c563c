"""The ``oauth2`` integration: an API reached with OAuth2 bearer tokens (client-credentials
or refresh-token grant), and how its connection's credentials become a tool's.

Credentials hold the client (``token_url``, ``client_id``, ``client_secret``,
``auth_method``), the grant and what it asks for (``grant_type``, ``scope``,
``extra_params`` such as an ``audience``), the API the tokens are for (``base_url``), and
the token state the client keeps up to date (``access_token``, ``expires_at``,
``refresh_token``...; see ``oauth2.py``).

Test: a client-credentials connection asks for a token (harmless; nothing is stored). A
refresh-token connection is refreshed through the client, with the lock and the token
store, because the provider may rotate its refresh token. Then, when ``test_path`` is
set, a GET of it under ``base_url`` with the token must answer 2xx.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.errors import PermanentError, ToolError
from shiftflow.kernel.integrations import probe
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, passed
from shiftflow.kernel.integrations.oauth2 import AUTH_METHODS, GRANTS, OAuth2Client, TokenSet
from shiftflow.kernel.integrations.secrets import secret
from shiftflow.kernel.tools.http_auth import within

_URL = {"type": "string", "pattern": r"^https?://[^\s#]+$", "maxLength": 2048}
#: Form fields ``extra_params`` may not set: the client sets them.
_RESERVED = ["grant_type", "refresh_token", "scope", "client_id", "client_secret"]

CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["token_url", "client_id", "grant_type"],
    "properties": {
        "token_url": {**_URL, "description": "The authorisation server's token endpoint."},
        "client_id": {"type": "string", "minLength": 1, "maxLength": 512},
        "client_secret": secret({"type": "string", "minLength": 1, "maxLength": 4096}),
        "grant_type": {"enum": list(GRANTS), "default": "client_credentials"},
        "auth_method": {"enum": list(AUTH_METHODS), "default": "client_secret_basic",
                        "description": "How the client authenticates to the token endpoint."},
        "scope": {"oneOf": [{"type": "string", "maxLength": 2048},
                            {"type": "array", "items": {"type": "string", "pattern": r"^\S+$"}, "maxItems": 100}]},
        "extra_params": {"type": "object", "maxProperties": 20,
                         "additionalProperties": {"type": "string", "maxLength": 2048},
                         "propertyNames": {"not": {"enum": _RESERVED}},
                         "description": "More fields of the token request (an audience, a resource)."},
        "base_url": {**_URL, "description": "The API the tokens are for; tools send them only under it."},
        "test_path": {"type": "string", "maxLength": 2048,
                      "description": "A harmless GET under base_url that needs the token."},
        # The token state, written by the token client (through the engine's store).
        "refresh_token": secret({"type": "string", "minLength": 1, "maxLength": 8192}),
        "access_token": secret({"type": "string", "minLength": 1, "maxLength": 16384}),
        "token_type": {"type": "string", "maxLength": 40},
        "expires_at": {"type": "number"},
        "issued_at": {"type": "number"},
        "granted_scope": {"type": "string", "maxLength": 4096},
    },
    "allOf": [
        {"if": {"properties": {"grant_type": {"const": "refresh_token"}}, "required": ["grant_type"]},
         "then": {"required": ["refresh_token"]}},
        {"if": {"properties": {"auth_method": {"enum": ["client_secret_basic", "client_secret_post"]}}},
         "then": {"required": ["client_secret"]}},
        {"if": {"required": ["test_path"]}, "then": {"required": ["base_url"]}},
    ],
}


def client_for(ctx: CheckContext) -> OAuth2Client:
    """The context's token client, or one built from its settings."""
    if ctx.oauth2 is not None:
        return ctx.oauth2
    if ctx.settings is not None:
        return OAuth2Client.from_settings(ctx.settings)
    return OAuth2Client(timeout=ctx.timeout, allow_private=ctx.allow_private)


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """Get a token, then GET ``test_path`` with it; see the module docstring."""
    client = client_for(ctx)
    if credentials["grant_type"] == "refresh_token":
        if ctx.tokens is None or ctx.connection_id is None:
            raise PermanentError("a refresh-token connection is tested through its token store (the provider may "
                                 "rotate the refresh token): test it once it is saved")
        # A forced refresh: the stored access token is reported as rejected.
        stored = TokenSet.from_credentials(credentials)
        tokens = client.token(ctx.connection_id, credentials, ctx.tokens,
                              rejected=stored.access_token if stored else None)
        how = "refreshed the token" + (" (the refresh token was rotated)"
                                       if tokens.refresh_token != credentials.get("refresh_token") else "")
    else:
        tokens = client.request_token(credentials, connection_id=ctx.connection_id)
        how = "issued a token"
    life = "" if tokens.expires_at is None else f", valid {max(0, round(tokens.expires_at - client.clock()))} s"
    details: dict[str, Any] = {"scope": tokens.scope} if tokens.scope else {}
    path = credentials.get("test_path")
    if not path:
        return passed(f"the token endpoint {how}{life}", **details)
    url = within(str(path), str(credentials["base_url"]))
    answer = probe.get(url, ctx, headers={"Authorization": f"Bearer {tokens.access_token}"},
                       refused="the API refused the token")
    if answer.status >= 300:
        raise ToolError(f"GET {url} answered {answer.status} with the token")
    return passed(f"the token endpoint {how}{life}; GET {url} answered {answer.status} with it", **details)


INTEGRATION = Integration(
    key="oauth2",
    name="OAuth2 API",
    description="An HTTP API reached with OAuth2 bearer tokens (client-credentials or refresh-token grant).",
    category="developer",
    auth_type="OAUTH2",
    credentials_schema=CREDENTIALS_SCHEMA,
    test=check,
    tools=("http.request",),
    docs_url="https://www.rfc-editor.org/rfc/rfc6749",
)
