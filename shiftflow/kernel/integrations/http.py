"""The ``http`` integration: any HTTP API, with an API key (header or query), a bearer token
or basic auth, used by the ``http.request`` tool (``kernel/tools/http_auth.py`` puts the
credentials on the request, and only on requests to the connection's ``base_url``).

Test: a GET of ``test_path`` (under ``base_url``) with the credentials; a 2xx passes, a
401 or 403 fails. Without ``test_path`` the test GETs ``base_url`` itself and can only say
that the API answers: many API roots answer without credentials.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.integrations import probe
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, passed, unverified
from shiftflow.kernel.integrations.secrets import secret
from shiftflow.kernel.tools.http_auth import AUTH_SCHEMES, DEFAULT_HEADER, DEFAULT_QUERY_PARAM, authorize

#: An http(s) URL without a query or a fragment (an API root).
URL_PATTERN = r"^https?://[^\s?#]+$"
_HEADER_NAME = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"


def _needs(scheme: str, *fields: str) -> dict[str, Any]:
    return {"if": {"properties": {"auth": {"const": scheme}}, "required": ["auth"]},
            "then": {"required": list(fields)}}


CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["auth", "base_url"],
    "properties": {
        "base_url": {"type": "string", "pattern": URL_PATTERN, "maxLength": 2048,
                     "description": "The API's root; credentials are sent only to URLs under it."},
        "auth": {"enum": list(AUTH_SCHEMES), "default": "none",
                 "description": "How the API authenticates callers."},
        "api_key": secret({"type": "string", "minLength": 1, "maxLength": 4096}),
        "header_name": {"type": "string", "pattern": _HEADER_NAME, "default": DEFAULT_HEADER,
                        "description": "The header carrying api_key (auth: api_key_header)."},
        "query_param": {"type": "string", "minLength": 1, "maxLength": 100, "default": DEFAULT_QUERY_PARAM,
                        "description": "The query parameter carrying api_key (auth: api_key_query)."},
        "token": secret({"type": "string", "minLength": 1, "maxLength": 8192}),
        "username": {"type": "string", "minLength": 1, "maxLength": 256},
        "password": secret({"type": "string", "maxLength": 4096}),
        "headers": {"type": "object", "maxProperties": 20,
                    "propertyNames": {"pattern": _HEADER_NAME},
                    "additionalProperties": {"type": "string", "pattern": r"^[\x20-\x7e]*$", "maxLength": 1024},
                    "description": "Fixed headers sent with every request (not secret: shown in clear)."},
        "test_path": {"type": "string", "maxLength": 2048,
                      "description": "A harmless GET under base_url that needs the credentials (e.g. /me)."},
    },
    "allOf": [
        _needs("api_key_header", "api_key"),
        _needs("api_key_query", "api_key"),
        _needs("bearer", "token"),
        _needs("basic", "username", "password"),
    ],
}


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """GET ``test_path`` (or ``base_url``) with the credentials; see the module docstring."""
    path = credentials.get("test_path")
    inputs = authorize(credentials, {"url": path or "", "method": "GET"})
    answer = probe.get(inputs["url"], ctx, headers=inputs.get("headers"), params=inputs.get("params"))
    where = f"GET {inputs['url']}"
    if not path:
        return unverified(f"{where} answered {answer.status}; set test_path to an endpoint that needs the "
                          "credentials to prove them", status=answer.status)
    if answer.status >= 300:
        raise ToolError(f"{where} answered {answer.status}")
    return passed(f"{where} answered {answer.status} with the credentials", status=answer.status)


INTEGRATION = Integration(
    key="http",
    name="HTTP API",
    description="Any HTTP API, with an API key in a header or the query, a bearer token, or basic auth.",
    category="developer",
    auth_type="API_KEY",
    credentials_schema=CREDENTIALS_SCHEMA,
    test=check,
    tools=("http.request",),
)
