"""A local LLM provider for tests and dev mode, speaking BOTH OpenAI's Chat Completions
(``POST /v1/chat/completions``) and Anthropic's Messages API (``POST /v1/messages``) over
real HTTP on 127.0.0.1. Loopback only; no model: answers are made from the prompt.

    fake = FakeLlm()
    with FakeLlmServer(fake) as server:
        client = make_client("openai", {"api_key": "k", "base_url": server.openai_base_url}, allow_private=True)
        client.complete(...)            # "echo: <your last message>"
        fake.fail_next(429, retry_after=2)
        fake.requests                   # the ledger: every request, its body and the status answered

How it answers (deterministic):

* **Text**: ``echo: <the last user message>`` (markers removed); after tool results,
  ``tool results: <tool> -> <result>; ...``.
* **JSON mode** (OpenAI ``json_object``): ``{"echo": "..."}``; like OpenAI it refuses JSON
  mode when no message contains the word "json". **Structured output** (OpenAI
  ``json_schema``, or Anthropic's forced answer tool): a valid value for the schema
  (``llm_schema.instance_for``).
* **Tool calls**: when the request forces a tool (OpenAI's named function or
  ``required``, Anthropic's ``tool`` or ``any``: the named tool, else the LAST tool
  offered), or when tools are offered and the last user message says
  ``[[tool NAME]]`` or ``[[tool NAME {"city": "Paris"}]]``. Arguments: those given, else
  a valid value of the tool's schema.
* **Scripts**: ``fake.script("MARKER", text=..., json=..., tool=..., arguments=...)``
  answers any request whose last user message contains MARKER.
* **Usage**: the tokenizer is a whitespace split; input = the words of the system text,
  every message, tool call and tool result, and each offered tool's name, description
  and schema; output = the words of the answer (or of each call's JSON arguments). An
  answer longer than ``max_tokens`` words is cut there (``length`` / ``max_tokens``).
* **Faults**: ``fail_next(status, ...)`` (429 with or without ``Retry-After``,
  ``retry-after-ms`` or an exhausted limit's reset headers, 529 ``overloaded_error``,
  500, 401...), ``slow_next(seconds)`` / ``delay`` (answer late: beyond a client's
  timeout), ``drop_next()`` (close without answering), ``trickle_next(seconds)`` (send the
  body in pieces over that long), ``raw_next(body)`` (answer exactly these bytes); or, in a prompt, ``[[fail 429 retry-after=2 times=1]]``,
  ``[[slow 3]]``, ``[[drop]]``, ``[[trickle 3]]``.
* **Checks** as the real APIs make them (``llm_wire``): keys (``api_key`` if set, else
  any non-empty key), ``anthropic-version``, ``max_tokens`` on Anthropic, tool results
  answering a tool call, roles, tool names; ``models`` (if set) lists the known models
  (others 404); ``model_aliases`` names the model an answer reports (``gpt-4o`` ->
  ``gpt-4o-2024-08-06``).

``/_fake/...`` routes expose the controls over HTTP (for dev mode and other processes):
``POST /_fake/fail``, ``/_fake/slow``, ``/_fake/script``, ``/_fake/reset``;
``GET /_fake/requests`` (keys masked), ``/_fake/counters``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shiftflow.fakes.llm_schema import instance_for
from shiftflow.fakes.llm_wire import (
    Conversation,
    Reply,
    WireError,
    count_tokens,
    error_body,
    read_anthropic,
    read_openai,
    render_anthropic,
    render_openai,
)
from shiftflow.fakes.threaded_http import BackgroundServer, TrackedHandler

__all__ = ["FakeFailure", "FakeLlm", "FakeLlmServer", "RecordedLlmRequest", "Script", "count_tokens"]

ROUTES = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}
_MARKER = re.compile(r"\[\[(fail|slow|drop|trickle|tool)\b(.*?)\]\]", re.DOTALL)
_UNSET: Any = object()
_SECRET_HEADERS = ("authorization", "x-api-key")


@dataclass(frozen=True)
class FakeFailure:
    """An error answer to inject.

    Attributes:
        status: the HTTP status (429, 529, 500, 503, 401...).
        api: ``openai`` or ``anthropic`` to fail only that API; None for both.
        retry_after: seconds sent as ``Retry-After`` (None: no header).
        retry_after_ms: milliseconds sent as ``retry-after-ms`` (None: no header).
        reset: seconds until the exhausted limit resets, sent as that API's rate-limit
            headers with ``remaining`` 0 (None: no such headers).
        error_type: the error type in the body (e.g. ``insufficient_quota``); the
            status's usual type when None.
        message: the error message; a generic one when None.
    """

    status: int
    api: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    reset: float | None = None
    error_type: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Script:
    """A scripted answer for requests whose last user message contains ``marker``."""

    marker: str
    text: str | None = None
    json: Any = _UNSET
    tool: str | None = None
    arguments: dict[str, Any] | None = None


@dataclass
class RecordedLlmRequest:
    """One request as the fake saw it, and the status it answered."""

    number: int
    api: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    at: float = field(default_factory=time.time)

    @property
    def model(self) -> str | None:
        """The model asked for."""
        return self.body.get("model") if isinstance(self.body, dict) else None

    def public(self) -> dict[str, Any]:
        """The record as JSON, keys masked (for ``GET /_fake/requests``)."""
        headers = {k: ("***" if k in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return {"number": self.number, "api": self.api, "path": self.path, "status": self.status,
                "at": self.at, "headers": headers, "body": self.body}


@dataclass
class Outcome:
    """What the HTTP handler sends: status, headers, body, and how (late, in pieces, or not at all)."""

    status: int
    headers: dict[str, str]
    body: bytes
    delay: float = 0.0
    drop: bool = False
    trickle: float = 0.0


def _markers(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2).strip()) for m in _MARKER.finditer(text)]


def _strip_markers(text: str) -> str:
    return " ".join(_MARKER.sub(" ", text).split())


def _number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


class FakeLlm:
    """The fake provider's state: controls, scripts and the request ledger (thread-safe).

    Parameters:
        api_key: the only key accepted (None: any non-empty key).
        models: the models it knows (None: every model).
        model_aliases: model asked for -> model reported in the answer.
        delay: seconds every answer waits (on top of ``slow_next``).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: set[str] | None = None,
        model_aliases: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.lock = threading.Lock()
        self.api_key = api_key
        self.models = set(models) if models else None
        self.model_aliases = dict(model_aliases or {})
        self.delay = delay
        self.requests: list[RecordedLlmRequest] = []
        self._failures: list[FakeFailure] = []
        self._slow: list[float] = []
        self._trickle: list[float] = []
        self._drops = 0
        self._raw: list[tuple[int, bytes]] = []
        self._scripts: list[Script] = []
        self._marker_counts: Counter[str] = Counter()
        self._count = 0

    # ------------------------------------------------------------------ controls

    def fail_next(
        self,
        status: int = 429,
        count: int = 1,
        *,
        api: str | None = None,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        reset: float | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (of ``api``, or of both) with an error; see ``FakeFailure``."""
        failure = FakeFailure(status, api, retry_after, retry_after_ms, reset, error_type, message)
        with self.lock:
            self._failures.extend([failure] * count)

    def slow_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next ``count`` answers ``seconds`` before sending anything."""
        with self.lock:
            self._slow.extend([seconds] * count)

    def trickle_next(self, seconds: float, count: int = 1) -> None:
        """Send the next ``count`` answers' bodies in pieces spread over ``seconds``."""
        with self.lock:
            self._trickle.extend([seconds] * count)

    def drop_next(self, count: int = 1) -> None:
        """Close the connection of the next ``count`` requests without answering."""
        with self.lock:
            self._drops += count

    def raw_next(self, body: bytes, status: int = 200, count: int = 1) -> None:
        """Answer the next ``count`` requests with this exact body (a proxy's HTML page, a broken shape)."""
        with self.lock:
            self._raw.extend([(status, body)] * count)

    def script(
        self,
        marker: str,
        *,
        text: str | None = None,
        json: Any = _UNSET,
        tool: str | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Answer requests whose last user message contains ``marker`` with this text, JSON or tool call."""
        with self.lock:
            self._scripts.append(Script(marker, text, json, tool, arguments))

    def reset(self) -> None:
        """Forget the ledger, pending faults, scripts and marker counts."""
        with self.lock:
            self.requests.clear()
            self._failures.clear()
            self._slow.clear()
            self._trickle.clear()
            self._drops = 0
            self._raw.clear()
            self._scripts.clear()
            self._marker_counts.clear()

    def calls(self, api: str | None = None) -> list[RecordedLlmRequest]:
        """The ledger (of one API when named)."""
        with self.lock:
            return [r for r in self.requests if api is None or r.api == api]

    def counters(self) -> dict[str, Any]:
        """Requests in total, per API and per status answered."""
        with self.lock:
            return {
                "requests": len(self.requests),
                "by_api": dict(Counter(r.api for r in self.requests)),
                "by_status": {str(k): v for k, v in Counter(r.status for r in self.requests).items()},
            }

    # ------------------------------------------------------------------ answering

    def handle(self, api: str, path: str, headers: dict[str, str], raw: bytes) -> Outcome:
        """Answer one API request (called by the HTTP handler; usable without HTTP in tests)."""
        with self.lock:
            self._count += 1
            number = self._count
        request_id = f"req_fake_{number:06d}"
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = None
        outcome = self._answer(api, headers, body, number, request_id)
        outcome.headers[("x-request-id" if api == "openai" else "request-id")] = request_id
        with self.lock:
            self.requests.append(RecordedLlmRequest(number, api, path, dict(headers), body, outcome.status))
        return outcome

    def _error(self, api: str, status: int, message: str, request_id: str, error_type: str | None = None,
               headers: dict[str, str] | None = None) -> Outcome:
        body = error_body(api, status, message, error_type, request_id)
        return Outcome(status, dict(headers or {}), json.dumps(body).encode())

    def _auth(self, api: str, headers: dict[str, str], request_id: str) -> Outcome | None:
        if api == "openai":
            value = headers.get("authorization", "")
            key = value[7:].strip() if value.lower().startswith("bearer ") else ""
            if not key:
                return self._error(api, 401, "You didn't provide an API key. You need to provide your API key in an "
                                   "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                                   request_id)
            if self.api_key is not None and key != self.api_key:
                # OpenAI echoes (a masked form of) the key: the fake echoes all of it, so a
                # client that leaks it into its errors fails its tests.
                return self._error(api, 401, f"Incorrect API key provided: {key}. You can find your API key at "
                                   "https://platform.openai.com/account/api-keys.", request_id)
            return None
        # x-api-key, or a bearer token (newer Anthropic SDKs send the key that way).
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key", "").strip() or (bearer[7:].strip() if bearer.lower().startswith("bearer ") else "")
        if not key or (self.api_key is not None and key != self.api_key):
            return self._error(api, 401, f"invalid x-api-key {key}".strip(), request_id)
        if not headers.get("anthropic-version"):
            return self._error(api, 400, "anthropic-version: header is required", request_id)
        return None

    def _injected(self, api: str, failure: FakeFailure, request_id: str) -> Outcome:
        headers: dict[str, str] = {}
        if failure.retry_after is not None:
            headers["retry-after"] = f"{failure.retry_after:g}"
        if failure.retry_after_ms is not None:
            headers["retry-after-ms"] = str(failure.retry_after_ms)
        if failure.reset is not None:
            if api == "anthropic":
                when = datetime.now(UTC) + timedelta(seconds=failure.reset)
                headers["anthropic-ratelimit-requests-limit"] = "50"
                headers["anthropic-ratelimit-requests-remaining"] = "0"
                headers["anthropic-ratelimit-requests-reset"] = when.isoformat().replace("+00:00", "Z")
                headers["anthropic-ratelimit-tokens-remaining"] = "1000"
                headers["anthropic-ratelimit-tokens-reset"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            else:
                headers["x-ratelimit-limit-requests"] = "60"
                headers["x-ratelimit-remaining-requests"] = "0"
                headers["x-ratelimit-reset-requests"] = f"{failure.reset:g}s"
                headers["x-ratelimit-remaining-tokens"] = "1000"
                headers["x-ratelimit-reset-tokens"] = "1ms"
        default = {
            429: "Rate limit reached for requests (fake)",
            529: "Overloaded",
            500: "The server had an error while processing your request (fake)",
            503: "The engine is currently overloaded, please try again later (fake)",
        }.get(failure.status, f"fake failure {failure.status}")
        return self._error(api, failure.status, failure.message or default, request_id, failure.error_type, headers)

    def _answer(self, api: str, headers: dict[str, str], body: Any, number: int, request_id: str) -> Outcome:
        refused = self._auth(api, headers, request_id)
        if refused is not None:
            return refused
        with self.lock:
            failure = next((f for f in self._failures if f.api in (None, api)), None)
            if failure is not None:
                self._failures.remove(failure)
        if failure is not None:
            return self._injected(api, failure, request_id)
        with self.lock:
            raw_answer = self._raw.pop(0) if self._raw else None
        if raw_answer is not None:
            return Outcome(raw_answer[0], {}, raw_answer[1])
        try:
            conv = read_openai(body) if api == "openai" else read_anthropic(body)
        except WireError as exc:
            return self._error(api, exc.status, exc.message, request_id)
        if self.models is not None and conv.model not in self.models:
            message = (f"The model `{conv.model}` does not exist or you do not have access to it."
                       if api == "openai" else f"model: {conv.model}")
            return self._error(api, 404, message, request_id)
        delay, trickle, drop = self.delay, 0.0, False
        with self.lock:
            if self._slow:
                delay += self._slow.pop(0)
            if self._trickle:
                trickle = self._trickle.pop(0)
            if self._drops:
                self._drops -= 1
                drop = True
            scripts = list(self._scripts)
        text = conv.last_user_text or ""
        for kind, args in _markers(text):
            if kind == "fail":
                parts = args.split()
                options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
                times = int(options.get("times", "0") or 0)
                if times:
                    with self.lock:
                        key = f"{api}|{text}"
                        self._marker_counts[key] += 1
                        if self._marker_counts[key] > times:
                            continue
                status = int(_number(parts[0], 500)) if parts else 500
                ra = options.get("retry-after")
                ms = options.get("retry-after-ms")
                reset = options.get("reset")
                failure = FakeFailure(
                    status,
                    retry_after=_number(ra, 1.0) if ra is not None else None,
                    retry_after_ms=int(_number(ms, 1000)) if ms is not None else None,
                    reset=_number(reset, 1.0) if reset is not None else None,
                    error_type=options.get("type"),
                )
                return self._injected(api, failure, request_id)
            if kind == "slow":
                delay += _number(args, 1.0)
            elif kind == "trickle":
                trickle = _number(args, 1.0)
            elif kind == "drop":
                drop = True
        script = next((s for s in scripts if conv.last_user_text is not None and s.marker in conv.last_user_text), None)
        reply = self._reply(conv, script)
        model = self.model_aliases.get(conv.model, conv.model)
        rendered = render_openai(reply, model, number) if api == "openai" else render_anthropic(reply, model, number)
        return Outcome(200, {}, json.dumps(rendered).encode(), delay=delay, drop=drop, trickle=trickle)

    @staticmethod
    def _reply(conv: Conversation, script: Script | None) -> Reply:
        tools = {tool.name: tool for tool in conv.tools}
        fresh = conv.last_user_text is not None  # not a turn of tool results
        markers = _markers(conv.last_user_text or "")
        asked: tuple[str, dict[str, Any] | None] | None = None
        for kind, args in markers:
            if kind == "tool" and args:
                name, _, rest = args.partition(" ")
                parsed = None
                if rest.strip():
                    try:
                        value = json.loads(rest)
                    except ValueError:
                        value = None
                    parsed = value if isinstance(value, dict) else None
                # The caller's name (email.send) or its wire name (email_send): both work.
                asked = (re.sub(r"[^A-Za-z0-9_-]", "_", name), parsed)
                break
        if script is not None and script.tool:
            asked = (re.sub(r"[^A-Za-z0-9_-]", "_", script.tool), script.arguments)

        def arguments_for(name: str) -> dict[str, Any]:
            if fresh and asked is not None and asked[0] == name and asked[1] is not None:
                return asked[1]
            if script is not None and script.json is not _UNSET and isinstance(script.json, dict) and not script.tool:
                return script.json
            schema = tools[name].schema
            if not schema.get("properties") and schema.get("additionalProperties", True) is not False:
                # A schema that says nothing (Anthropic's answer tool for plain JSON mode):
                # answer as OpenAI's JSON mode does.
                return {"echo": _strip_markers(conv.last_user_text or "")}
            value = instance_for(schema, hint=name)
            return value if isinstance(value, dict) else {}

        calls: list[tuple[str, dict[str, Any]]] = []
        mode, forced = conv.choice
        if mode == "tool" and forced in tools:
            calls = [(forced, arguments_for(forced))]
        elif mode == "required" and tools:
            name = asked[0] if fresh and asked is not None and asked[0] in tools else conv.tools[-1].name
            calls = [(name, arguments_for(name))]
        elif mode != "none" and fresh and asked is not None and asked[0] in tools:
            calls = [(asked[0], arguments_for(asked[0]))]
        tokens_in = sum(count_tokens(t) for t in conv.texts)
        if calls:
            tokens_out = sum(count_tokens(json.dumps(args)) for _, args in calls)
            return Reply(None, calls, False, tokens_in, tokens_out)
        if conv.last_user_text is not None:
            base = "echo: " + _strip_markers(conv.last_user_text)
        elif conv.tool_results:
            base = "tool results: " + "; ".join(f"{name} -> {content}" for name, content in conv.tool_results)
        else:
            base = "echo:"
        if conv.json_mode is not None:
            if script is not None and script.json is not _UNSET:
                value = script.json
            elif conv.json_mode == "schema":
                value = instance_for(conv.schema, hint="text")
            else:
                value = {"echo": base.removeprefix("echo: ")}
            text = json.dumps(value)
        else:
            text = script.text if script is not None and script.text is not None else base
        tokens_out = count_tokens(text)
        truncated = conv.max_tokens is not None and tokens_out > conv.max_tokens
        if truncated and conv.max_tokens is not None:
            text = " ".join(text.split()[: conv.max_tokens])
            tokens_out = conv.max_tokens
        return Reply(text, [], truncated, tokens_in, tokens_out)


# ---------------------------------------------------------------------- HTTP


class _Handler(TrackedHandler):
    def do_GET(self) -> None:
        fake: FakeLlm = self.server.state
        if self.path == "/_fake/requests":
            with fake.lock:
                records = [r.public() for r in fake.requests]
            self.send_json(200, records)
        elif self.path == "/_fake/counters":
            self.send_json(200, fake.counters())
        else:
            self.send_json(404, {"error": {"message": f"no route GET {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        raw = self.read_body()
        api = ROUTES.get(self.path.split("?", 1)[0])
        if api is not None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._send(self.server.state.handle(api, self.path, headers, raw))
        elif self.path.startswith("/_fake/"):
            self._control(self.path.removeprefix("/_fake/"), raw)
        else:
            self.send_json(404, {"error": {"message": f"no route POST {self.path}", "type": "not_found"}})

    def _control(self, name: str, raw: bytes) -> None:
        fake: FakeLlm = self.server.state
        try:
            data = json.loads(raw or b"{}")
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            if name == "fail":
                fake.fail_next(**data)
            elif name == "slow":
                fake.slow_next(**data)
            elif name == "script":
                fake.script(**data)
            elif name == "reset":
                fake.reset()
            else:
                self.send_json(404, {"error": {"message": f"no control {name!r}"}})
                return
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": {"message": str(exc)}})
            return
        self.send_json(200, {"ok": True})

    def _send(self, outcome: Outcome) -> None:
        if outcome.delay > 0 and self.server.stopping.wait(outcome.delay):
            self.close_connection = True
            return
        if outcome.drop:
            self.close_connection = True
            return
        if outcome.trickle <= 0:
            self.send_bytes(outcome.status, outcome.body, outcome.headers)
            return
        self.send_response(outcome.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(outcome.body)))
        for name, value in outcome.headers.items():
            self.send_header(name, value)
        self.end_headers()
        pieces = 10
        step = max(1, -(-len(outcome.body) // pieces))
        for start in range(0, len(outcome.body), step):
            self.wfile.write(outcome.body[start : start + step])
            self.wfile.flush()
            if self.server.stopping.wait(outcome.trickle / pieces):
                self.close_connection = True
                return


class FakeLlmServer(BackgroundServer):
    """Serves a ``FakeLlm`` over HTTP on 127.0.0.1 from background threads.

    Parameters:
        fake: the state to serve; a fresh ``FakeLlm()`` by default.
        port: 0 picks a free port (bound in the constructor: no race for it).

    Raises:
        OSError: the port is taken.
    """

    def __init__(self, fake: FakeLlm | None = None, *, port: int = 0) -> None:
        self.fake = fake or FakeLlm()
        super().__init__(_Handler, self.fake, port=port, name="fake-llm")

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` of an OpenAI-compatible connection (the root plus ``/v1``)."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` of an Anthropic connection (the root)."""
        return self.url
