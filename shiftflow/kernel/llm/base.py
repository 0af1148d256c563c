"""What both provider clients share: checking a request, the HTTP call under one deadline,
the mapping of failures to errors, tool names on the wire, and reading a JSON answer.

A provider client (``openai_chat``, ``anthropic_messages``) adds only its wire format: the
URL, headers and body it sends, and how it reads the answer and the error body.

Why plain HTTP (httpx) and not the providers' SDKs: httpx is already a dependency
(nothing more to install offline, no pydantic models built per answer), and the SDKs
retry on their own by default (two retries, sleeping in the calling thread) where
ShiftFlow wants a rate-limited step parked for the provider's ``Retry-After`` instead;
one deadline per call and one error mapping for both providers are simpler to hold
here than to configure through two SDKs. The fakes in ``shiftflow.fakes.llm`` speak the
same wire formats, so the clients are tested over real HTTP.
"""

from __future__ import annotations

import functools
import json
import math
import re
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import httpcore
import httpx
import jsonschema
from jsonschema.exceptions import SchemaError, best_match

from shiftflow.kernel import observe
from shiftflow.kernel.errors import ToolError, ToolUnavailable
from shiftflow.kernel.llm.credentials import Credentials
from shiftflow.kernel.llm.errors import (
    InvalidLlmRequest,
    LlmAuthFailed,
    LlmBadResponse,
    LlmError,
    LlmRateLimited,
    LlmRejected,
    LlmTimeout,
    LlmUnavailable,
)
from shiftflow.kernel.llm.prices import price_table
from shiftflow.kernel.llm.retry_hints import retry_after_from_headers
from shiftflow.kernel.llm.types import ROLES, Completion, LlmRequest, ResponseFormat, Tool
from shiftflow.kernel.tools.http import destination, tls_context
from shiftflow.kernel.tools.pinned import PinnedBackend, PinnedTransport

#: The deadline of a call when neither the request nor the client names one, seconds.
DEFAULT_TIMEOUT = 120.0
#: The longest wait for a connection, within the call's deadline, seconds.
CONNECT_TIMEOUT = 10.0
#: The largest answer read; a longer one is refused (an answer is text and JSON, never this big).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: Error types that mean an exhausted quota or billing problem: a 429 that waiting cannot fix.
QUOTA_ERRORS = frozenset({"insufficient_quota", "billing_error", "billing_hard_limit_reached"})

#: Failures before anything was sent (httpx's own, and httpcore's through the pinned transport).
_NOT_CONNECTED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpcore.ConnectError,
                  httpcore.ConnectTimeout, httpcore.PoolTimeout)
_WIRE_NAME = re.compile(r"[^A-Za-z0-9_-]")
_KEY_LIKE = re.compile(r"\b(sk-(?:ant-)?(?:proj-)?)[A-Za-z0-9_\-*]{6,}")
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as read: status, headers, body and the time it took (seconds)."""

    status: int
    headers: httpx.Headers
    body: bytes
    latency: float


class ToolNames:
    """The names tools have on the wire, and back.

    Providers take ``[A-Za-z0-9_-]{1,64}``; ShiftFlow's tools are named ``email.send``.
    Other characters become ``_`` on the wire; two tools that would meet on one wire
    name are refused rather than confused.
    """

    def __init__(self, tools: tuple[Tool, ...]) -> None:
        self._to_wire: dict[str, str] = {}
        self._from_wire: dict[str, str] = {}
        for index, tool in enumerate(tools):
            if tool.name in self._to_wire:
                raise InvalidLlmRequest(f"tools[{index}].name: {tool.name!r} is offered twice")
            wire = self.sanitize(tool.name)
            if wire in self._from_wire:
                raise InvalidLlmRequest(
                    f"tools[{index}].name: {tool.name!r} and {self._from_wire[wire]!r} both become "
                    f"{wire!r} on the wire (providers allow letters, digits, '_' and '-')"
                )
            self._to_wire[tool.name] = wire
            self._from_wire[wire] = tool.name

    @staticmethod
    def sanitize(name: str) -> str:
        """``name`` with every character a provider refuses replaced by ``_``, at most 64 long."""
        return _WIRE_NAME.sub("_", name)[:64]

    def wire(self, name: str) -> str:
        """The wire name of a tool (also for calls in the history of tools no longer offered)."""
        return self._to_wire.get(name) or self.sanitize(name)

    def local(self, wire: str) -> str:
        """The caller's name of a tool the model called."""
        return self._from_wire.get(wire, wire)

    def taken(self, wire: str) -> bool:
        """Whether an offered tool already has this wire name."""
        return wire in self._from_wire


def parsed_host(url: str) -> str:
    """The host of ``url``, for messages."""
    return httpx.URL(url).host


def redact(text: str, secret: str) -> str:
    """``text`` without ``secret`` or anything shaped like an API key (providers echo keys in 401s)."""
    if len(secret) >= 4:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub(r"\1***", text)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@functools.lru_cache(maxsize=512)
def _schema_problem(schema_text: str) -> str | None:
    # Checking a schema against its meta-schema is slow (docs/benchmarks.md#outside-calls):
    # once per distinct schema.
    schema = json.loads(schema_text)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return None


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, Mapping):
        raise InvalidLlmRequest(f"{where}: expected a JSON Schema object")
    try:
        problem = _schema_problem(json.dumps(schema, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise InvalidLlmRequest(f"{where}: not JSON ({exc})") from None
    if problem is not None:
        raise InvalidLlmRequest(f"{where}: not a valid JSON Schema: {problem}")


def check_request(request: LlmRequest, *, provider: str, max_temperature: float) -> None:
    """Refuse a request that cannot be right before anything is sent.

    Raises:
        InvalidLlmRequest: naming the field (``messages[2].tool_call_id``, ``temperature``...).
    """
    if not isinstance(request.model, str) or not request.model.strip():
        raise InvalidLlmRequest("model: is missing")
    if not request.messages:
        raise InvalidLlmRequest("messages: at least one message is needed")
    for index, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidLlmRequest(f"messages[{index}].role: {message.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(message.content, str):
            raise InvalidLlmRequest(f"messages[{index}].content: expected text")
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidLlmRequest(f"messages[{index}].tool_call_id: a tool result must name the call it answers")
        if message.role == "user" and not message.content.strip():
            raise InvalidLlmRequest(f"messages[{index}].content: a user message is empty")
        if message.role == "assistant" and not message.content and not message.tool_calls:
            raise InvalidLlmRequest(f"messages[{index}]: an assistant message needs text or tool calls")
    if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 1:
        raise InvalidLlmRequest(f"max_tokens: {request.max_tokens!r} is not a whole number of at least 1")
    if request.temperature is not None and not (
        _finite(request.temperature) and 0 <= request.temperature <= max_temperature
    ):
        raise InvalidLlmRequest(
            f"temperature: {request.temperature!r} is outside {provider}'s range of 0 to {max_temperature:g}"
        )
    if request.timeout is not None and not (_finite(request.timeout) and request.timeout > 0):
        raise InvalidLlmRequest(f"timeout: {request.timeout!r} is not a positive number of seconds")
    names = {tool.name for tool in request.tools}
    for index, tool in enumerate(request.tools):
        if not tool.name or not isinstance(tool.name, str):
            raise InvalidLlmRequest(f"tools[{index}].name: is missing")
        _check_schema(tool.parameters, f"tools[{index}].parameters")
    choice = request.tool_choice
    if choice not in (None, "auto", "none", "required") and choice not in names:
        raise InvalidLlmRequest(f"tool_choice: {choice!r} is not auto, required, none or an offered tool")
    if choice == "required" and not request.tools:
        raise InvalidLlmRequest("tool_choice: required, but no tools are offered")
    response_format = request.response_format
    if response_format is not None:
        if response_format.type not in ("json_object", "json_schema"):
            raise InvalidLlmRequest(
                f"response_format.type: {response_format.type!r} is not json_object or json_schema"
            )
        if response_format.type == "json_schema":
            _check_schema(response_format.schema, "response_format.schema")


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    schema = json.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)


def check_json_answer(value: Any, response_format: ResponseFormat) -> str | None:
    """Why ``value`` is not the JSON asked for, or None when it is."""
    if response_format.type == "json_object" or response_format.schema is None:
        return None if isinstance(value, dict) else "the answer is JSON but not an object"
    validator = _validator(json.dumps(response_format.schema, sort_keys=True))
    if validator.is_valid(value):
        return None
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "(the whole answer)"
    return f"the answer does not match the schema at {where}: {error.message}"


def decode_json_answer(text: str, response_format: ResponseFormat | None) -> tuple[Any, str | None]:
    """The decoded answer and why it is not what was asked for (``(None, None)`` when no JSON was asked)."""
    if response_format is None:
        return None, None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"the answer is not JSON: {exc}"
    return value, check_json_answer(value, response_format)


def parse_arguments(text: str) -> dict[str, Any] | None:
    """A tool call's arguments decoded, or None when they are not a JSON object."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def as_int(value: Any) -> int:
    """A token count from an answer (0 when absent or malformed)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class ProviderClient(ABC):
    """A client of one provider connection: ``complete(request) -> Completion``.

    Thread-safe; keep one per connection and reuse it (it pools connections).

    Parameters:
        credentials: the connection's dict (``api_key``, ``base_url``...) or checked ``Credentials``.
        timeout: the deadline of a call whose request names none, seconds.
        allow_private: allow a base URL on loopback or a private network (dev mode,
            tests, a self-hosted model); calls then share a keep-alive pool. Off: every
            call resolves the base URL's host once, checks every address and connects
            only to those (``tools.pinned``), as the HTTP tool does, so a connection
            cannot reach internal services, not even through DNS rebinding.
        transport: an ``httpx`` transport (tests); None opens real connections.

    Raises:
        InvalidCredentials: the credentials lack a field or hold a malformed one.
    """

    #: ``openai`` or ``anthropic``.
    provider: ClassVar[str]
    #: The highest temperature the provider accepts.
    max_temperature: ClassVar[float]
    #: The header the provider puts its request id in.
    request_id_header: ClassVar[str]

    def __init__(
        self,
        credentials: Mapping[str, Any] | Credentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        allow_private: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if isinstance(credentials, Credentials):
            self.credentials = credentials
        else:
            self.credentials = Credentials.from_dict(self.provider, credentials)
        if not (_finite(timeout) and timeout > 0):
            raise InvalidLlmRequest(f"timeout: {timeout!r} is not a positive number of seconds")
        self.default_timeout = float(timeout)
        self.allow_private = allow_private
        # Proxy variables and .netrc are ignored, as by the HTTP tool (trust_env=False).
        self._http = httpx.Client(
            transport=transport,
            verify=tls_context(),
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            headers={"user-agent": "shiftflow-llm/0.1"},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.credentials.base_url!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the call

    def complete(self, request: LlmRequest) -> Completion:
        """Send one request and return the answer.

        Raises:
            InvalidLlmRequest: the request cannot be right (nothing was sent).
            LlmRejected, LlmAuthFailed: the provider refused it (permanent).
            LlmRateLimited: a 429/529/overloaded answer; wait ``retry_after`` seconds.
            LlmUnavailable, LlmTimeout: may pass later (transient).
            LlmBadResponse: a success status with a body that is not an answer.
        """
        try:
            completion = self._complete(request)
        except Exception:
            observe.llm_failed(request.model)
            raise
        observe.llm_usage(completion.model or request.model, completion.tokens_in, completion.tokens_out,
                          self._cost(request, completion))
        return completion

    @staticmethod
    def _cost(request: LlmRequest, completion: Completion) -> Decimal | None:
        """What the call cost by the price table; None when unknown (no usage, no price)."""
        if not completion.usage_reported:
            return None
        try:
            return price_table().cost(completion.model or request.model, completion.tokens_in,
                                      completion.tokens_out, asked=request.model)
        except Exception:  # noqa: BLE001 - no price or settings: the metric goes without, the call goes on
            return None

    def _complete(self, request: LlmRequest) -> Completion:
        check_request(request, provider=self.provider, max_temperature=self.max_temperature)
        names = ToolNames(request.tools)
        body = self.build_body(request, names)
        answer = self._post(self.url(), self.headers(), body, request.timeout or self.default_timeout)
        data = self._decode(answer)
        if answer.status >= 300 or answer.status < 200:
            raise self._error(answer, data)
        if not isinstance(data, dict):
            raise self._bad_response(answer, "the body is not a JSON object")
        try:
            return self.read_answer(request, names, data, answer)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise self._bad_response(answer, f"unexpected answer shape ({type(exc).__name__}: {exc})") from None

    def _post(self, url: str, headers: Mapping[str, str], body: Mapping[str, Any], timeout: float) -> Answer:
        """POST ``body`` and read the whole answer within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        http, owned = self._http, False
        if not self.allow_private:
            # As the HTTP tool does: resolve the host once, check every address, and dial
            # only those (a second lookup could be answered 127.0.0.1: DNS rebinding). One
            # connection per call, so no keep-alive: a handshake is small next to an answer.
            parsed = httpx.URL(url)
            try:
                addresses = destination(parsed, allow_private=False)
            except ToolError as exc:
                raise LlmRejected(
                    f"{self.provider} base_url refused: {exc} (allow private addresses only in dev mode)",
                    provider=self.provider,
                ) from None
            except ToolUnavailable as exc:
                raise LlmUnavailable(f"{self.provider}: {exc}", provider=self.provider) from None
            backend = PinnedBackend(parsed.raw_host.decode("ascii"), addresses, deadline)
            http = httpx.Client(transport=PinnedTransport(backend, tls_context()), trust_env=False,
                                follow_redirects=False, headers=self._http.headers)
            owned = True
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        limits = httpx.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout, write=timeout, pool=timeout)
        request = http.build_request("POST", url, content=content, headers=headers, timeout=limits)
        started = time.perf_counter()
        try:
            response = http.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise LlmBadResponse(
                            f"{self.provider} answer is larger than {MAX_ANSWER_BYTES} bytes; refused",
                            provider=self.provider,
                            status=response.status_code,
                        )
                    chunks.append(chunk)
                    # A server trickling bytes never trips the read timeout: the deadline does.
                    if time.monotonic() > deadline:
                        raise self._timeout(timeout, "the answer was still arriving")
            finally:
                response.close()
        except _NOT_CONNECTED as exc:
            if any(isinstance(c, ssl.SSLCertVerificationError) for c in (exc.__cause__, exc.__context__, *exc.args)):
                raise LlmRejected(
                    f"{self.provider}: the TLS certificate of {parsed_host(url)} does not verify ({exc})",
                    provider=self.provider,
                ) from None
            raise LlmUnavailable(
                f"{self.provider}: could not connect to {parsed_host(url)} ({type(exc).__name__}: {exc})",
                provider=self.provider,
            ) from None
        except (httpx.TimeoutException, httpcore.TimeoutException):
            raise self._timeout(timeout, "no answer") from None
        except (httpx.TransportError, httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
            raise LlmUnavailable(
                f"{self.provider}: the connection failed ({type(exc).__name__}: {exc})", provider=self.provider
            ) from None
        finally:
            if owned:
                http.close()
        return Answer(response.status_code, response.headers, b"".join(chunks), time.perf_counter() - started)

    def _timeout(self, timeout: float, what: str) -> LlmTimeout:
        return LlmTimeout(
            f"{self.provider}: {what} within the call's deadline of {timeout:g} s "
            "(the provider may still have run, and billed, the call)",
            provider=self.provider,
        )

    @staticmethod
    def _decode(answer: Answer) -> Any:
        try:
            return json.loads(answer.body) if answer.body.strip() else None
        except ValueError:
            return None

    def _bad_response(self, answer: Answer, why: str) -> LlmBadResponse:
        return LlmBadResponse(
            f"{self.provider} answered {answer.status} with an unreadable body: {why}",
            provider=self.provider,
            status=answer.status,
            request_id=answer.headers.get(self.request_id_header),
        )

    # ------------------------------------------------------------------ errors

    def _error(self, answer: Answer, data: Any) -> LlmError:
        status = answer.status
        error_type, detail = self.read_error(data)
        if detail is None:
            detail = answer.body[:300].decode("utf-8", "replace").strip() or "(no message)"
        request_id = answer.headers.get(self.request_id_header)
        text = f"{self.provider} answered {status}" + (f" {error_type}" if error_type else "") + f": {detail}"
        if request_id:
            text += f" (request id {request_id})"
        text = redact(text, self.credentials.api_key)
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 3] + "..."
        common: dict[str, Any] = {
            "provider": self.provider,
            "status": status,
            "error_type": error_type,
            "request_id": request_id,
        }
        overloaded = status == 529 or error_type == "overloaded_error"
        if error_type in QUOTA_ERRORS:
            return LlmRejected(text, **common)
        if status == 429 or overloaded or (status == 503 and "retry-after" in answer.headers):
            return LlmRateLimited(
                text, retry_after=retry_after_from_headers(answer.headers), overloaded=overloaded, **common
            )
        if status in (401, 403):
            return LlmAuthFailed(text, **common)
        if status == 408 or status >= 500:
            return LlmUnavailable(text, **common)
        return LlmRejected(text, **common)

    @staticmethod
    def read_error(data: Any) -> tuple[str | None, str | None]:
        """The error type and message of an error body (``{"error": {...}}`` for both providers)."""
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, str):
            return None, error
        if not isinstance(error, dict):
            return None, None
        code = error.get("code")
        kind = code if isinstance(code, str) and code else error.get("type")
        message = error.get("message")
        return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else None)

    # ------------------------------------------------------------------ the wire format

    @abstractmethod
    def url(self) -> str:
        """The URL requests are POSTed to."""

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """The headers of every request (the key among them)."""

    @abstractmethod
    def build_body(self, request: LlmRequest, names: ToolNames) -> dict[str, Any]:
        """The request body in the provider's format."""

    @abstractmethod
    def read_answer(self, request: LlmRequest, names: ToolNames, data: dict[str, Any], answer: Answer) -> Completion:
        """The ``Completion`` in a successful answer's body."""
