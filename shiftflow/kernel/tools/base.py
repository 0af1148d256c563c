"""The tool contract: what a tool declares, what it is given, and how its parameters are checked.

A tool is a plain function ``run(params, ctx) -> result`` with a declaration around it: a
dotted name (``email.send``), a description, a category, JSON Schemas for its parameters
and its result, the queue kind it runs on, and its effect (``once`` for a call that must
never happen twice, such as an email; ``repeatable`` for a fetch). ``Tool.call`` validates
the parameters (errors name the field: ``with.to: 'x' is not an email``), runs the
function and checks the result against its schema.

The engine builds a ``ToolContext`` per call: the connection's credentials already
decrypted (a plain dict), the artifact store, the limits, and whether private addresses
may be reached. Nothing here touches the database or the broker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from shiftflow.kernel import observe
from shiftflow.kernel.errors import PermanentError, ToolError, TransientError

if TYPE_CHECKING:
    from shiftflow.kernel.artifacts import ArtifactStore
    from shiftflow.kernel.settings import Settings

#: The per-kind queues a tool may run on (``deploy/pools.yaml`` gives each a pool).
QUEUE_KINDS = ("tools", "tools.email", "tools.browser", "tools.media")
#: ``once``: the outside effect must never happen twice (no blind retry after an unknown outcome).
#: ``repeatable``: calling again is harmless (a fetch, a conversion).
EFFECTS = ("once", "repeatable")

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# Deliberately plain: one @, no spaces, a dot in the domain. RFC 5322 allows far more,
# but an address a person types into a workflow never needs it, and "x" must fail.
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")

FORMATS = FormatChecker()

#: A parameter naming an artifact: its location, or the object a tool returned for it.
ARTIFACT_INPUT = {"oneOf": [
    {"type": "string", "minLength": 1},
    {"type": "object", "required": ["location"], "properties": {"location": {"type": "string", "minLength": 1}}},
]}
#: An artifact in a result (``ArtifactRef.to_dict()``).
ARTIFACT_OUTPUT = {
    "type": "object",
    "required": ["location", "name", "mime", "size", "sha256"],
    "properties": {"location": {"type": "string"}, "name": {"type": "string"}, "mime": {"type": "string"},
                   "size": {"type": "integer"}, "sha256": {"type": "string"}},
}


@FORMATS.checks("email")
def _is_email(value: object) -> bool:
    return not isinstance(value, str) or bool(_EMAIL.match(value))


class InvalidParameters(ToolError):
    """Raised when a tool's parameters do not match its schema; the message names each field.

    Parameters:
        problems: one ``path: reason`` line per problem, in field order.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ToolLimits:
    """The limits and timeouts a tool call runs under (built from settings, overridable in tests)."""

    http_timeout: float = 10.0
    smtp_timeout: float = 30.0
    page_timeout: float = 30.0
    max_text_bytes: int = 1_048_576
    max_artifact_bytes: int = 52_428_800
    max_pixels: int = 40_000_000
    max_duration: float = 600.0
    media_timeout: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolLimits:
        """The limits the settings name (``SHIFTFLOW_*_TIMEOUT_SECONDS``, ``*_MAX_*``)."""
        return cls(
            http_timeout=settings.http_timeout_seconds,
            smtp_timeout=settings.smtp_timeout_seconds,
            page_timeout=settings.browser_page_timeout_seconds,
            max_text_bytes=settings.browser_max_text_bytes,
            max_artifact_bytes=settings.artifact_max_bytes,
            max_pixels=settings.media_max_pixels,
            max_duration=settings.media_max_duration_seconds,
            media_timeout=settings.media_timeout_seconds,
        )


@dataclass(frozen=True)
class ToolContext:
    """What a tool function is given besides its parameters.

    Parameters:
        artifacts: where input files are read and output files written.
        credentials: the connection's secrets, decrypted, as a plain dict (empty: no connection).
        limits: timeouts and size limits.
        allow_private: let outside calls reach loopback/private addresses (dev mode, tests).
        idempotency_key: stable across retries of one call (the engine passes
            ``<execution id>.<step id>.<iteration>``); tools with ``effect: once`` put it where the far side can
            de-duplicate (an email's Message-ID).
        settings: the process settings, for tools that need a path (chromium, ffmpeg); None
            means the tool's defaults.
    """

    artifacts: ArtifactStore
    credentials: Mapping[str, Any] = field(default_factory=dict)
    limits: ToolLimits = field(default_factory=ToolLimits)
    allow_private: bool = False
    idempotency_key: str | None = None
    settings: Settings | None = None

    def credential(self, name: str) -> Any:
        """A credential the tool cannot work without.

        Raises:
            ToolError: the connection has no such field (names it, never its value).
        """
        value = self.credentials.get(name)
        if value in (None, ""):
            raise ToolError(f"connection: the credential {name!r} is missing")
        return value


Runner = Callable[[dict[str, Any], ToolContext], dict[str, Any]]


@dataclass(frozen=True)
class Tool:
    """One tool: its declaration and its function.

    Parameters:
        name: dotted, lowercase (``email.send``); unique in a registry.
        description: one sentence for people and for the tool list.
        category: a family for grouping (``email``, ``browser``, ``media``, ``notify``...).
        params_schema / result_schema: JSON Schemas (draft 2020-12) of ``with`` and of the result.
        queue: one of ``QUEUE_KINDS``: where calls of this tool are executed.
        effect: ``once`` or ``repeatable`` (see ``EFFECTS``).
        run: the function; raises ``PermanentError``/``TransientError`` children only.
        integration: the kind of connection the tool needs (``smtp``, ``chat_webhook``), or None.
    """

    name: str
    description: str
    category: str
    params_schema: Mapping[str, Any]
    result_schema: Mapping[str, Any]
    queue: str
    effect: str
    run: Runner
    integration: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise PermanentError(f"tool name {self.name!r}: expected lowercase dotted words like 'email.send'")
        if self.queue not in QUEUE_KINDS:
            raise PermanentError(f"tool {self.name}: queue {self.queue!r} is not one of {', '.join(QUEUE_KINDS)}")
        if self.effect not in EFFECTS:
            raise PermanentError(f"tool {self.name}: effect {self.effect!r} is not one of {', '.join(EFFECTS)}")
        for which in ("params_schema", "result_schema"):
            Draft202012Validator.check_schema(getattr(self, which))
        # Validators compile the schema once; keeping them makes a call's check cheap.
        object.__setattr__(self, "_params", Draft202012Validator(self.params_schema, format_checker=FORMATS))
        object.__setattr__(self, "_result", Draft202012Validator(self.result_schema, format_checker=FORMATS))

    def validate(self, params: Any, *, where: str = "with") -> dict[str, Any]:
        """Check ``params`` against the parameter schema.

        Parameters:
            params: the (rendered) parameters.
            where: the prefix of field paths in messages (``steps[3].with`` for a definition).

        Returns:
            ``params`` as a dict.

        Raises:
            InvalidParameters: one line per problem, each naming its field.
        """
        problems = schema_problems(self._params, params, where)  # type: ignore[attr-defined]
        if problems:
            raise InvalidParameters(problems)
        return dict(params)

    def static_problems(self, params: Any, *, where: str = "with") -> list[str]:
        """The problems of a step's ``with`` as written, before rendering: a value holding a
        ``{{ reference }}`` is known only at run time, so what its schema says of it (a
        format, a type) is left to the check of the rendered parameters; a missing required
        field or an unknown one is a problem already.

        Returns:
            ``path: reason`` lines in field order (empty: nothing wrong yet).
        """
        validator: Draft202012Validator = self._params  # type: ignore[attr-defined]
        errors = sorted(validator.iter_errors(params), key=lambda e: [str(p) for p in e.absolute_path])
        kept = [e for e in errors if e.validator in ("required", "additionalProperties")
                or not _templated(e.instance)]
        return [f"{field_path(where, e.absolute_path)}: {_reason(e)}" for e in kept]

    def call(self, params: Any, ctx: ToolContext) -> dict[str, Any]:
        """Validate ``params``, run the tool, and check its result against the result schema.

        Raises:
            InvalidParameters: the parameters do not match the schema.
            ToolError: the tool returned a result its own schema refuses (a bug in the tool).
            PermanentError / TransientError: whatever the tool raised.
        """
        started, outcome = time.perf_counter(), "error"
        try:
            result = self.run(self.validate(params), ctx)
            problems = schema_problems(self._result, result, "result")  # type: ignore[attr-defined]
            if problems:
                raise ToolError(f"tool {self.name} returned a result its schema refuses: {'; '.join(problems)}")
            outcome = "ok"
            return result
        except InvalidParameters:
            outcome = "invalid"
            raise
        except PermanentError:
            outcome = "permanent"
            raise
        except TransientError:
            outcome = "transient"
            raise
        finally:
            observe.tool_call(self.name, outcome, time.perf_counter() - started)

    def describe(self) -> dict[str, Any]:
        """The declaration as JSON (for ``GET /tools`` and ``shiftflow tools show``)."""
        return {
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "queue": self.queue,
            "effect": self.effect,
            "integration": self.integration,
            "params_schema": self.params_schema,
            "result_schema": self.result_schema,
        }


def _templated(value: Any) -> bool:
    """True when ``value`` holds a ``{{ reference }}`` anywhere (rendered at run time)."""
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


def field_path(where: str, path: Any) -> str:
    """``with`` + ``["to", 0]`` -> ``with.to[0]``."""
    out = where
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _reason(error: ValidationError) -> str:
    if error.validator == "format":
        fmt = str(error.validator_value)
        article = "an" if fmt[:1] in "aeiou" else "a"
        return f"{error.instance!r} is not {article} {fmt}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set((error.schema.get("properties") or {}).keys())
        extra = sorted(k for k in error.instance if k not in allowed)
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}"
    return error.message


def schema_problems(validator: Draft202012Validator, value: Any, where: str, *,
                    missing_as_fields: bool = False) -> list[str]:
    """Every way ``value`` fails ``validator``, as ``path: reason`` lines in field order.

    Parameters:
        missing_as_fields: report a missing required field at its own path
            (``credentials.password: required``) instead of its parent's
            (``credentials: 'password' is a required property``).
    """
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    lines: list[str] = []
    for e in errors:
        if missing_as_fields and e.validator == "required" and isinstance(e.instance, dict):
            lines.extend(f"{field_path(where, [*e.absolute_path, name])}: required"
                         for name in e.validator_value if name not in e.instance)
        else:
            lines.append(f"{field_path(where, e.absolute_path)}: {_reason(e)}")
    if missing_as_fields:  # the expanded lines in field order too
        return sorted(set(lines), key=lambda line: (line.split(": ", 1)[0], line))
    return lines
