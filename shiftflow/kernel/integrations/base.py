"""What an integration declares: credentials, tools, rate limits, and a harmless test.

An *integration* is a kind of outside service (``smtp``, ``slack``, ``oauth2``...); a
*connection* is one workspace's credentials for it. ``Integration`` holds the catalogue
entry as data: key, name, description, category, the JSON Schema of the credentials
(secret fields carry ``"x-secret": true``, so the API can mask them and the CLI can ask
for them without echo), the tools it serves, its default rate limits, and ``test``, a
function that makes one harmless call proving a set of credentials works.

Nothing here touches the database, Redis or the broker: the engine stores connections,
``ratelimit`` shares limits, ``oauth2`` refreshes tokens.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from shiftflow.kernel.errors import PermanentError, ShiftFlowError, TransientError
from shiftflow.kernel.integrations.secrets import redactor, scrubber_for, secret_paths
from shiftflow.kernel.quota import Limit
from shiftflow.kernel.tools.base import FORMATS, schema_problems

if TYPE_CHECKING:
    from shiftflow.kernel.integrations.oauth2 import OAuth2Client, TokenStore
    from shiftflow.kernel.settings import Settings

#: The ``auth_type`` values of the integration table.
AUTH_TYPES = ("OAUTH2", "API_KEY", "BASIC", "NONE")
#: Where a cool-down after an outside 429 applies: to the one connection that met it, or
#: to every connection of the integration (a service that counts by our address).
COOLDOWN_SCOPES = ("connection", "integration")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class InvalidCredentials(PermanentError):
    """Raised when credentials do not match their integration's schema; names each field.

    Parameters:
        problems: one ``credentials.<field>: reason`` line per problem, in field order.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class RateLimits:
    """How fast one connection (or one integration as a whole) may be called.

    ``per_second`` and ``per_minute`` are average rates (0: not limited on that scale);
    ``burst`` is how many calls may go at once after a quiet spell. Each scale is a token
    bucket of ``kernel/quota.py``: the per-second one holds ``burst`` tokens and refills
    ``per_second`` a second; the per-minute one holds ``min(burst, per_minute)`` and refills
    ``per_minute / 60`` a second. Over a long run the rates hold exactly; within any one
    minute at most the bucket's contents plus the rate can pass.
    """

    per_second: float = 0.0
    per_minute: float = 0.0
    burst: int = 1

    def __post_init__(self) -> None:
        for name in ("per_second", "per_minute"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise PermanentError(f"rate limit {name}: expected a number >= 0, got {value!r}")
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1:
            raise PermanentError(f"rate limit burst: expected a whole number >= 1, got {self.burst!r}")

    @property
    def unlimited(self) -> bool:
        """True when neither scale limits anything."""
        return self.per_second <= 0 and self.per_minute <= 0

    def buckets(self) -> list[tuple[str, Limit]]:
        """The token buckets (name, limit) that enforce these limits."""
        out: list[tuple[str, Limit]] = []
        if self.per_second > 0:
            out.append(("s", Limit(self.per_second, self.burst)))
        if self.per_minute > 0:
            out.append(("m", Limit(self.per_minute / 60.0, max(1, min(self.burst, math.floor(self.per_minute))))))
        return out

    def merged(self, override: Mapping[str, Any] | RateLimits | None) -> RateLimits:
        """These limits with the fields ``override`` gives replaced (a connection's own limits)."""
        if override is None:
            return self
        if isinstance(override, RateLimits):
            return override
        return RateLimits(**{**self.to_dict(), **parse_overrides(override)})

    def to_dict(self) -> dict[str, Any]:
        """``{"per_second", "per_minute", "burst"}``."""
        return {"per_second": self.per_second, "per_minute": self.per_minute, "burst": self.burst}

    def describe(self) -> str:
        """``"1/s, 30/min, burst 3"``, or ``"unlimited"``."""
        parts = [f"{self.per_second:g}/s"] if self.per_second > 0 else []
        parts += [f"{self.per_minute:g}/min"] if self.per_minute > 0 else []
        return ", ".join([*parts, f"burst {self.burst}"]) if parts else "unlimited"


#: The JSON Schema of a connection's own limits (all fields optional; 0 means no limit).
RATE_LIMITS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "per_second": {"type": "number", "minimum": 0, "maximum": 1_000_000},
        "per_minute": {"type": "number", "minimum": 0, "maximum": 60_000_000},
        "burst": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
    },
}
_RATE_LIMITS = Draft202012Validator(RATE_LIMITS_SCHEMA)


def parse_overrides(value: Any, where: str = "rate_limits") -> dict[str, Any]:
    """A connection's limit overrides checked against ``RATE_LIMITS_SCHEMA``.

    Raises:
        InvalidCredentials: a field is unknown or out of range (the message names it).
    """
    problems = schema_problems(_RATE_LIMITS, value, where)
    if problems:
        raise InvalidCredentials(problems)
    return dict(value)


@dataclass(frozen=True)
class CheckContext:
    """What a connection test is given besides the credentials.

    Parameters:
        timeout: seconds the test's outside call may take.
        allow_private: let it reach loopback/private addresses (dev mode, tests).
        settings: the process settings (SideShift's API root, OAuth2 timeouts); None: defaults.
        connection_id: the connection under test (OAuth2 persists a refreshed token under it).
        tokens: where OAuth2 tokens are kept (``oauth2.TokenStore``); a refresh-token
            connection cannot be tested without it, because a refresh may rotate the token.
        oauth2: the token client to use; None builds one from ``settings``.
    """

    timeout: float = 10.0
    allow_private: bool = False
    settings: Settings | None = None
    connection_id: str | None = None
    tokens: TokenStore | None = None
    oauth2: OAuth2Client | None = None


#: Outcomes of a connection test.
PASSED, FAILED, UNVERIFIED = "passed", "failed", "unverified"
_TEST_STATUS = {PASSED: "SUCCESS", FAILED: "FAILED", UNVERIFIED: "PENDING"}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a connection test.

    Parameters:
        status: ``passed`` (the credentials work), ``failed`` (they do not, or the service
            could not be reached), or ``unverified`` (nothing wrong was found, but the service
            offers no harmless way to prove the credentials; ``message`` says why).
        message: for people; never holds a secret value.
        retryable: a failure that may pass later (a timeout, a 5xx): the credentials were
            not judged.
        seconds: how long the test took.
        details: non-secret facts the test learned (a webhook's channel, a token's scope).
    """

    status: str
    message: str
    retryable: bool = False
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def test_status(self) -> str:
        """The connection table's ``test_status``: SUCCESS, FAILED or PENDING (unverified)."""
        return _TEST_STATUS[self.status]

    def to_dict(self) -> dict[str, Any]:
        """As JSON (for ``POST /connections/{id}/test``)."""
        return {"status": self.status, "test_status": self.test_status, "message": self.message,
                "retryable": self.retryable, "seconds": round(self.seconds, 3), "details": dict(self.details)}


def passed(message: str, **details: Any) -> CheckResult:
    """A passed test."""
    return CheckResult(PASSED, message, details=details)


def unverified(message: str, **details: Any) -> CheckResult:
    """A test that found nothing wrong but could not prove the credentials (says why)."""
    return CheckResult(UNVERIFIED, message, details=details)


CheckFn = Callable[[dict[str, Any], CheckContext], CheckResult]


@dataclass(frozen=True)
class Integration:
    """One catalogue entry.

    Parameters:
        key: lowercase identifier (``smtp``, ``slack``); unique in a catalogue.
        name / description / category: for people and the integration list.
        auth_type: one of ``AUTH_TYPES`` (the integration table's column).
        credentials_schema: JSON Schema (draft 2020-12) of a connection's credentials; a
            secret field carries ``"x-secret": true``; ``default`` values are filled in.
        test: ``test(credentials, ctx) -> CheckResult``: one harmless call; raises
            ``PermanentError``/``TransientError`` children (``check_connection`` turns them
            into a failed result).
        tools: the names of the registry's tools a connection of this kind serves.
        limits: default limits per connection (None: the deployment's default,
            ``SHIFTFLOW_INTEGRATION_RATE_PER_SECOND``/``_BURST``); a connection may override.
        shared_limits: limits across every connection of the integration together (a
            service that counts calls by our address), or None.
        cooldown_scope: where a cool-down after an outside 429 applies (``COOLDOWN_SCOPES``).
        base_url: the service's default API root, when it has one.
        docs_url: the service's documentation for people.
        http_credentials: how a connection's credentials become those of the
            ``http.request`` tool (``tools/http_auth.py``'s shape: ``auth``, ``base_url``...),
            for an integration that serves it; not needed by ``http`` itself (already in
            that shape) nor by OAuth2 ones (``connections.tool_credentials`` gets a token).
    """

    key: str
    name: str
    description: str
    category: str
    auth_type: str
    credentials_schema: Mapping[str, Any]
    test: CheckFn
    tools: tuple[str, ...] = ()
    limits: RateLimits | None = None
    shared_limits: RateLimits | None = None
    cooldown_scope: str = "connection"
    base_url: str | None = None
    docs_url: str | None = None
    http_credentials: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise PermanentError(f"integration key {self.key!r}: expected lowercase letters, digits and _")
        if self.auth_type not in AUTH_TYPES:
            raise PermanentError(f"integration {self.key}: auth_type {self.auth_type!r} is not one of "
                                 f"{', '.join(AUTH_TYPES)}")
        if self.cooldown_scope not in COOLDOWN_SCOPES:
            raise PermanentError(f"integration {self.key}: cooldown_scope {self.cooldown_scope!r} is not one of "
                                 f"{', '.join(COOLDOWN_SCOPES)}")
        if self.credentials_schema.get("type") != "object":
            raise PermanentError(f"integration {self.key}: credentials_schema must describe an object")
        Draft202012Validator.check_schema(self.credentials_schema)
        object.__setattr__(self, "tools", tuple(self.tools))
        if ("http.request" in self.tools and self.key != "http" and self.auth_type != "OAUTH2"
                and self.http_credentials is None):
            raise PermanentError(f"integration {self.key}: serving http.request needs http_credentials (how its "
                                 "credentials go on a request)")
        object.__setattr__(self, "_validator", Draft202012Validator(self.credentials_schema, format_checker=FORMATS))

    @property
    def secret_fields(self) -> frozenset[str]:
        """The names of the top-level credential fields marked secret."""
        return frozenset(secret_paths(self.credentials_schema))

    def validate(self, credentials: Any, *, where: str = "credentials") -> dict[str, Any]:
        """``credentials`` checked against the schema, with the schema's defaults filled in.

        Raises:
            InvalidCredentials: one ``credentials.<field>: reason`` line per problem
                (``credentials.password: required``); no line quotes a secret value.
        """
        filled = with_defaults(self.credentials_schema, credentials) if isinstance(credentials, Mapping) else credentials
        problems = schema_problems(self._validator, filled, where, missing_as_fields=True)  # type: ignore[attr-defined]
        if problems:
            hide = redactor(credentials if isinstance(credentials, Mapping) else {}, self.credentials_schema)
            raise InvalidCredentials([hide(line) for line in problems])
        return dict(filled)

    def fields(self) -> list[dict[str, Any]]:
        """The top-level credential fields in schema order, for a form or a CLI prompt:
        ``{"name", "required", "secret", "description"?, "default"?, "choices"?}`` (a secret
        field is asked for without echo). ``required`` is the schema's unconditional list;
        fields required only in some cases (``if``/``then``) are reported by ``validate``."""
        required = set(self.credentials_schema.get("required") or ())
        secrets = self.secret_fields
        out: list[dict[str, Any]] = []
        for name, sub in (self.credentials_schema.get("properties") or {}).items():
            sub = sub if isinstance(sub, Mapping) else {}
            field_info: dict[str, Any] = {"name": name, "required": name in required, "secret": name in secrets}
            for key, label in (("description", "description"), ("default", "default"), ("enum", "choices")):
                if key in sub:
                    field_info[label] = sub[key]
            out.append(field_info)
        return out

    def serves(self, tool: str) -> bool:
        """True when a connection of this integration may be used by the tool ``tool``."""
        return tool in self.tools

    def describe(self) -> dict[str, Any]:
        """The entry as JSON (for ``GET /integrations`` and ``shiftflow integrations show``)."""
        return {
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "auth_type": self.auth_type,
            "credentials_schema": self.credentials_schema,
            "secret_fields": sorted(self.secret_fields),
            "fields": self.fields(),
            "tools": list(self.tools),
            "limits": None if self.limits is None else self.limits.to_dict(),
            "shared_limits": None if self.shared_limits is None else self.shared_limits.to_dict(),
            "cooldown_scope": self.cooldown_scope,
            "base_url": self.base_url,
            "docs_url": self.docs_url,
        }


def with_defaults(schema: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` with the ``default`` of every top-level property it lacks."""
    out = dict(value)
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, Mapping) and "default" in sub and name not in out:
            out[name] = sub["default"]
    return out


def check_connection(integration: Integration, credentials: Any, ctx: CheckContext) -> CheckResult:
    """Validate ``credentials`` and run the integration's test; never raises for a refusal.

    A schema problem, a refused credential or an unreachable service is a ``failed``
    result (``retryable`` when it may pass later); every message has the connection's
    secret values hidden.
    """
    given = credentials if isinstance(credentials, Mapping) else {}
    hide = redactor(given, integration.credentials_schema)
    started = time.monotonic()
    try:
        result = integration.test(integration.validate(credentials), ctx)
    except ShiftFlowError as exc:
        return CheckResult(FAILED, hide(str(exc)), retryable=isinstance(exc, TransientError),
                           seconds=time.monotonic() - started)
    details = scrubber_for(given, integration.credentials_schema)(dict(result.details))
    return CheckResult(result.status, hide(result.message), result.retryable, time.monotonic() - started, details)
