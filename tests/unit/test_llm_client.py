"""The LLM clients against the fake provider over real HTTP (``shiftflow.fakes.llm``), both APIs:
answers, usage and latency, JSON mode, structured output, tool round trips, every error
class, rate-limit hints, deadlines, and what is refused before anything is sent.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.errors import PermanentError, RateLimited, TransientError
from shiftflow.kernel.llm import (
    Completion,
    InvalidCredentials,
    InvalidLlmRequest,
    LlmAuthFailed,
    LlmBadResponse,
    LlmRateLimited,
    LlmRejected,
    LlmRequest,
    LlmTimeout,
    LlmUnavailable,
    Message,
    ProviderClient,
    ResponseFormat,
    Tool,
    make_client,
)
from shiftflow.kernel.llm.base import ToolNames

KEY = "sk-ant-test-0123456789abcdefSECRET"
PROVIDERS = ("openai", "anthropic")

WEATHER = Tool(
    "weather.get",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
     "required": ["city"]},
)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2},
        "age": {"type": "integer", "minimum": 18, "maximum": 120},
        "email": {"type": "string", "format": "email"},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeLlm, FakeLlmServer]]:
    fake = FakeLlm(api_key=KEY)
    with FakeLlmServer(fake) as server:
        yield fake, server


@pytest.fixture
def fake(served: tuple[FakeLlm, FakeLlmServer]) -> Iterator[FakeLlm]:
    fake = served[0]
    fake.reset()
    fake.model_aliases.clear()
    fake.models = None
    fake.delay = 0.0
    yield fake
    fake.reset()


def client_for(server: FakeLlmServer, provider: str, **kwargs: Any) -> ProviderClient:
    base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    return make_client(provider, {"api_key": KEY, "base_url": base}, allow_private=True, **kwargs)


@pytest.fixture(params=PROVIDERS)
def client(request: pytest.FixtureRequest, served: tuple[FakeLlm, FakeLlmServer], fake: FakeLlm) -> Iterator[ProviderClient]:
    with client_for(served[1], request.param, timeout=10) as client:
        yield client


def ask(text: str, **kwargs: Any) -> LlmRequest:
    return LlmRequest(model=kwargs.pop("model", "fake-echo"), messages=(Message.user(text),), **kwargs)


# ---------------------------------------------------------------------- answers


def test_completion_records_text_usage_latency_model_and_ids(client, fake):
    fake.model_aliases["fake-echo"] = "fake-echo-2025-01-01"
    out = client.complete(ask("hello there world", system="be brief", temperature=0.2, max_tokens=50))
    assert isinstance(out, Completion)
    assert out.text == "echo: hello there world"
    assert out.stop_reason == "end" and out.provider == client.provider
    # The fake's tokenizer splits on whitespace: "be brief" + "hello there world" in, 4 words out.
    assert (out.tokens_in, out.tokens_out, out.tokens_total) == (5, 4, 9)
    assert out.usage_reported
    assert out.model == "fake-echo-2025-01-01"  # as answered, not as asked
    assert 0 < out.latency < 5 and out.latency_ms >= 1
    assert out.request_id and out.request_id.startswith("req_fake_")
    assert out.response_id and out.response_id.startswith(("chatcmpl-", "msg_"))
    assert out.token_usage() == {"input": 5, "output": 4, "total": 9, "model": "fake-echo-2025-01-01"}
    [seen] = fake.requests
    assert seen.status == 200 and seen.model == "fake-echo"
    if client.provider == "openai":
        assert seen.path == "/v1/chat/completions"
        assert seen.headers["authorization"] == f"Bearer {KEY}"
        assert seen.body["messages"][0] == {"role": "system", "content": "be brief"}
        assert seen.body["max_tokens"] == 50 and seen.body["temperature"] == 0.2
    else:
        assert seen.path == "/v1/messages"
        assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
        assert seen.body["system"] == "be brief" and seen.body["max_tokens"] == 50


def test_an_answer_cut_at_max_tokens_says_so(client):
    out = client.complete(ask("one two three four five six", max_tokens=3))
    assert out.stop_reason == "max_tokens" and out.tokens_out == 3
    assert out.text == "echo: one two"


def test_json_mode_answers_a_json_object(client):
    out = client.complete(ask("reply in json please", response_format=ResponseFormat.json()))
    assert out.parsed == {"echo": "reply in json please"} and out.json_error is None
    assert out.stop_reason == "end"


def test_structured_output_matches_the_schema(client, fake):
    out = client.complete(ask("a person", response_format=ResponseFormat.json_schema(PERSON, name="person")))
    jsonschema.validate(out.parsed, PERSON)
    assert out.json_error is None and out.tool_calls == ()
    assert out.stop_reason == "end"
    body = fake.requests[-1].body
    if client.provider == "openai":
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == "person"
    else:  # asked for with a forced answer tool
        assert body["tool_choice"] == {"type": "tool", "name": "person"}
        assert body["tools"][-1]["input_schema"] == PERSON


def test_structured_output_whose_root_is_not_an_object(client):
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 3}
    out = client.complete(ask("three numbers", response_format=ResponseFormat.json_schema(schema)))
    assert out.parsed == [0, 0, 0] and out.json_error is None


def test_an_answer_that_fails_the_schema_is_returned_with_the_reason(client, fake):
    fake.script("BADAGE", json={"name": "Al", "age": 7, "role": "user", "tags": ["a", "b"]})
    out = client.complete(ask("BADAGE person", response_format=ResponseFormat.json_schema(PERSON)))
    assert out.parsed["age"] == 7  # what the model said, for the caller to feed back
    assert out.json_error is not None and "age" in out.json_error and "18" in out.json_error
    assert out.tokens_out > 0  # the call was made and billed


def test_json_cut_at_max_tokens_is_not_json(served, fake):
    """OpenAI only: Anthropic's JSON answer is a tool call's input, always a whole object."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    with client_for(served[1], "openai") as client:
        out = client.complete(ask("json", max_tokens=1, response_format=ResponseFormat.json_schema(schema)))
    assert out.stop_reason == "max_tokens"
    assert out.parsed is None and out.json_error is not None and out.json_error.startswith("the answer is not JSON")


# ---------------------------------------------------------------------- tools


def test_tool_use_round_trip_with_the_callers_tool_names(client, fake):
    first = client.complete(ask('weather in Paris? [[tool weather.get {"city": "Paris"}]]', tools=(WEATHER,)))
    assert first.stop_reason == "tool_use" and first.text == ""
    [call] = first.tool_calls
    assert call.name == "weather.get"  # "weather_get" on the wire, mapped back
    assert call.arguments == {"city": "Paris"} and call.id
    second = client.complete(
        LlmRequest(
            model="fake-echo",
            messages=(
                Message.user('weather in Paris? [[tool weather.get {"city": "Paris"}]]'),
                first.as_message(),
                Message.tool_result(call.id, '{"sky": "sunny"}'),
            ),
            tools=(WEATHER,),
        )
    )
    assert second.stop_reason == "end" and second.tool_calls == ()
    assert second.text == 'tool results: weather_get -> {"sky": "sunny"}'
    body = fake.requests[-1].body
    if client.provider == "openai":
        assert body["tools"][0]["function"]["name"] == "weather_get"
        assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "weather_get"
        assert body["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}
    else:
        assert body["tools"][0]["name"] == "weather_get"
        assert body["messages"][1]["content"][0]["type"] == "tool_use"
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": call.id, "content": '{"sky": "sunny"}'}
        ]


def test_a_forced_tool_is_called_with_arguments_valid_for_its_schema(client):
    out = client.complete(ask("anything", tools=(WEATHER,), tool_choice="weather.get"))
    [call] = out.tool_calls
    assert call.name == "weather.get"
    jsonschema.validate(call.arguments, WEATHER.parameters)


def test_tools_and_a_json_answer_together(client):
    """With tools offered, a JSON answer still comes back once the tools are done."""
    fmt = ResponseFormat.json_schema({"type": "object", "properties": {"summary": {"type": "string"}},
                                      "required": ["summary"]})
    first = client.complete(ask("json: weather? [[tool weather.get]]", tools=(WEATHER,), response_format=fmt))
    [call] = first.tool_calls
    assert first.parsed is None and first.json_error is None
    second = client.complete(LlmRequest(
        model="fake-echo",
        messages=(Message.user("json: weather? [[tool weather.get]]"), first.as_message(),
                  Message.tool_result(call.id, "rain")),
        tools=(WEATHER,), response_format=fmt,
    ))
    assert second.tool_calls == () and second.json_error is None
    assert set(second.parsed) == {"summary"}


def test_a_failed_tool_result_is_marked(client, fake):
    first = client.complete(ask("[[tool weather.get]]", tools=(WEATHER,)))
    client.complete(LlmRequest(
        model="fake-echo",
        messages=(Message.user("[[tool weather.get]]"), first.as_message(),
                  Message.tool_result(first.tool_calls[0].id, "city unknown", is_error=True)),
        tools=(WEATHER,),
    ))
    body = fake.requests[-1].body
    if client.provider == "openai":
        assert body["messages"][-1]["content"] == "error: city unknown"
    else:
        assert body["messages"][-1]["content"][0]["is_error"] is True


# ---------------------------------------------------------------------- errors


def test_429_with_retry_after_is_rate_limited_with_those_seconds(client, fake):
    fake.fail_next(429, retry_after=7)
    with pytest.raises(LlmRateLimited) as caught:
        client.complete(ask("hi"))
    exc = caught.value
    assert isinstance(exc, RateLimited) and isinstance(exc, TransientError)
    assert exc.retry_after == 7.0 and exc.status == 429 and not exc.overloaded
    assert exc.request_id and exc.request_id in str(exc)
    assert client.complete(ask("hi")).text == "echo: hi"  # the next call passes


def test_retry_after_ms_wins_over_retry_after(client, fake):
    fake.fail_next(429, retry_after=7, retry_after_ms=1500)
    with pytest.raises(LlmRateLimited) as caught:
        client.complete(ask("hi"))
    assert caught.value.retry_after == 1.5


def test_429_with_only_the_exhausted_limits_reset_header(client, fake):
    fake.fail_next(429, reset=30)
    with pytest.raises(LlmRateLimited) as caught:
        client.complete(ask("hi"))
    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30


def test_429_without_any_hint_leaves_the_wait_to_the_caller(client, fake):
    fake.fail_next(429)
    with pytest.raises(LlmRateLimited) as caught:
        client.complete(ask("hi"))
    assert caught.value.retry_after is None


def test_overloaded_529_is_rate_limited(client, fake):
    fake.fail_next(529, retry_after=3)
    with pytest.raises(LlmRateLimited) as caught:
        client.complete(ask("hi"))
    assert caught.value.overloaded and caught.value.status == 529 and caught.value.retry_after == 3.0
    if client.provider == "anthropic":
        assert caught.value.error_type == "overloaded_error"


def test_503_with_retry_after_is_rate_limited_and_without_is_transient(client, fake):
    fake.fail_next(503, retry_after=2)
    with pytest.raises(LlmRateLimited):
        client.complete(ask("hi"))
    fake.fail_next(503)
    with pytest.raises(LlmUnavailable) as caught:
        client.complete(ask("hi"))
    assert not isinstance(caught.value, RateLimited)


def test_500_is_transient(client, fake):
    fake.fail_next(500)
    with pytest.raises(LlmUnavailable) as caught:
        client.complete(ask("hi"))
    assert isinstance(caught.value, TransientError) and caught.value.status == 500


def test_an_exhausted_quota_is_permanent_not_a_rate_limit(client, fake):
    fake.fail_next(429, error_type="insufficient_quota", message="You exceeded your current quota")
    with pytest.raises(LlmRejected) as caught:
        client.complete(ask("hi"))
    assert isinstance(caught.value, PermanentError) and not isinstance(caught.value, RateLimited)
    assert "exceeded your current quota" in str(caught.value)


def test_a_wrong_key_is_permanent_and_never_shown(served, fake):
    fake_server = served[1]
    for provider in PROVIDERS:
        base = fake_server.openai_base_url if provider == "openai" else fake_server.anthropic_base_url
        wrong = "sk-proj-WRONGwrongWRONG1234567890"
        with make_client(provider, {"api_key": wrong, "base_url": base}, allow_private=True) as bad:
            with pytest.raises(LlmAuthFailed) as caught:
                bad.complete(ask("hi"))
            assert caught.value.status == 401 and isinstance(caught.value, PermanentError)
            assert wrong not in str(caught.value) and wrong not in repr(caught.value.args)
            assert wrong not in repr(bad) and wrong not in repr(bad.credentials)
    # The fake did echo the key: the client removed it.
    assert any(r.status == 401 for r in fake.requests)


def test_a_refused_request_names_the_providers_reason(client, fake):
    fake.models = {"known-model"}
    with pytest.raises(LlmRejected) as caught:
        client.complete(ask("hi", model="no-such-model"))
    assert caught.value.status == 404 and "no-such-model" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>proxy login</html>", "not a JSON object"),
        (b'{"choices": [], "content": "x"}', "unexpected answer shape"),
    ],
)
def test_a_success_status_with_a_body_that_is_no_answer_is_a_bad_response(client, fake, body, why):
    fake.raw_next(body)
    with pytest.raises(LlmBadResponse, match=why) as caught:
        client.complete(ask("hi"))
    assert isinstance(caught.value, PermanentError) and caught.value.status == 200


def test_a_slow_answer_is_cut_at_the_deadline(client, fake):
    fake.slow_next(20)
    started = time.monotonic()
    with pytest.raises(LlmTimeout) as caught:
        client.complete(ask("hi", timeout=0.5))
    assert time.monotonic() - started < 10  # the deadline, not the fake's 20 s
    assert isinstance(caught.value, TransientError) and "0.5 s" in str(caught.value)


def test_a_trickled_answer_is_cut_at_the_deadline_though_no_read_times_out(client, fake):
    """Pieces 1 s apart never trip a 1.5 s read timeout; the call's deadline still holds."""
    fake.script("LONG", text=" ".join(["word"] * 2000))
    fake.trickle_next(10)
    started = time.monotonic()
    with pytest.raises(LlmTimeout):
        client.complete(ask("LONG", timeout=1.5, max_tokens=5000))
    assert time.monotonic() - started < 8  # well before the 10 s the answer takes


def test_a_dropped_connection_is_transient(client, fake):
    fake.drop_next()
    with pytest.raises(LlmUnavailable):
        client.complete(ask("hi"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_nothing_listening_is_transient(provider):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    with make_client(provider, {"api_key": KEY, "base_url": f"http://127.0.0.1:{port}"}, allow_private=True) as c:
        with pytest.raises(LlmUnavailable, match="could not connect"):
            c.complete(ask("hi", timeout=5))


def test_stopping_the_fake_cuts_a_held_answer():
    fake = FakeLlm()
    server = FakeLlmServer(fake).start()
    client = make_client("openai", {"api_key": "k", "base_url": server.openai_base_url}, allow_private=True)
    fake.slow_next(60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.complete(ask("hi", timeout=60))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.requests, "the call never reached the fake"
    started = time.monotonic()
    server.stop()
    thread.join(10)
    client.close()
    assert not thread.is_alive() and time.monotonic() - started < 10
    assert len(errors) == 1 and isinstance(errors[0], LlmUnavailable)


# ---------------------------------------------------------------------- refused before sending


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (LlmRequest(model="", messages=(Message.user("x"),)), "model"),
        (LlmRequest(model="m", messages=()), "messages"),
        (LlmRequest(model="m", messages=(Message.user("  "),)), "messages[0].content"),
        (LlmRequest(model="m", messages=(Message("tool", "r"),)), "messages[0].tool_call_id"),
        (LlmRequest(model="m", messages=(Message.user("x"), Message.assistant(""))), "messages[1]"),
        (LlmRequest(model="m", messages=(Message.user("x"),), max_tokens=0), "max_tokens"),
        (LlmRequest(model="m", messages=(Message.user("x"),), temperature=2.5), "temperature"),
        (LlmRequest(model="m", messages=(Message.user("x"),), timeout=-1), "timeout"),
        (LlmRequest(model="m", messages=(Message.user("x"),), tool_choice="nope"), "tool_choice"),
        (LlmRequest(model="m", messages=(Message.user("x"),), tool_choice="required"), "tool_choice"),
        (LlmRequest(model="m", messages=(Message.user("x"),),
                    response_format=ResponseFormat.json_schema({"type": "nonsense"})), "response_format.schema"),
        (LlmRequest(model="m", messages=(Message.user("x"),),
                    tools=(WEATHER, Tool("weather_get", "dup"))), "tools[1].name"),
        (LlmRequest(model="m", messages=(Message.user("x"),), tools=(Tool("t", "d", {"type": 5}),)), "tools[0].parameters"),
    ],
)
def test_a_request_that_cannot_be_right_is_refused_before_sending(client, fake, request_, field):
    with pytest.raises(InvalidLlmRequest) as caught:
        client.complete(request_)
    assert str(caught.value).startswith(field)
    assert isinstance(caught.value, PermanentError)
    assert fake.requests == []


def test_anthropic_temperature_above_one_is_refused_openai_takes_it(served, fake):
    with client_for(served[1], "anthropic") as anthropic, client_for(served[1], "openai") as openai:
        with pytest.raises(InvalidLlmRequest, match="temperature.*anthropic.*0 to 1"):
            anthropic.complete(ask("x", temperature=1.5))
        assert openai.complete(ask("x", temperature=1.5)).text == "echo: x"


@pytest.mark.parametrize(
    ("provider", "credentials", "field"),
    [
        ("openai", {}, "api_key is missing"),
        ("openai", {"api_key": "  "}, "api_key is missing"),
        ("anthropic", {"api_key": "k", "base_ur1": "http://x"}, "unknown field 'base_ur1'"),
        ("anthropic", {"api_key": "k", "organization": "o"}, "unknown field 'organization'"),
        ("openai", {"api_key": "k", "base_url": "ftp://host"}, "base_url must be an http(s) URL"),
        ("openai", {"api_key": 5}, "api_key must be a string"),
        ("openai", {"api_key": "k", "max_tokens_param": "tokens"}, "max_tokens_param"),
        ("gemini", {"api_key": "k"}, "provider 'gemini' is unknown"),
    ],
)
def test_credentials_missing_or_misspelt_are_named(provider, credentials, field):
    with pytest.raises(InvalidCredentials, match=re.escape(field)) as caught:
        make_client(provider, credentials)
    assert "  " not in str(caught.value)


def test_a_private_base_url_is_refused_unless_allowed(served, fake):
    with make_client("openai", {"api_key": KEY, "base_url": served[1].openai_base_url}) as guarded:
        with pytest.raises(LlmRejected, match="not a public address"):
            guarded.complete(ask("hi"))
    assert fake.requests == []


def test_openai_itself_gets_max_completion_tokens_and_organization_headers():
    client = make_client("openai", {"api_key": "k", "organization": "org-1", "project": "proj-1"})
    body = client.build_body(ask("x", max_tokens=9), ToolNames(()))
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body
    assert client.headers()["openai-organization"] == "org-1" and client.headers()["openai-project"] == "proj-1"
    client.close()


# ---------------------------------------------------------------------- DNS rebinding

PUBLIC = "93.184.216.34"


class RebindingResolver:
    """``socket.getaddrinfo`` for one name: a public address first, 127.0.0.1 afterwards."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked = 0
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        self.asked += 1
        address = PUBLIC if self.asked == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_rebinding_base_url_cannot_reach_loopback(served, fake, monkeypatch, provider):
    """The base URL's host is resolved once, checked, and only the checked address is dialled."""
    attempts: list[str] = []
    real_connect = socket.create_connection

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        host = str(address[0])
        ip = host if host[0].isdigit() else socket.getaddrinfo(host, address[1])[0][4][0]
        attempts.append(ip)
        if ip != "127.0.0.1":
            raise ConnectionRefusedError(f"test: no route to {ip}")  # this machine has no way out
        return real_connect((ip, address[1]), *args, **kwargs)

    resolver = RebindingResolver("rebind.example")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    base = f"http://rebind.example:{served[1].port}" + ("/v1" if provider == "openai" else "")
    with make_client(provider, {"api_key": KEY, "base_url": base}) as client:
        with pytest.raises(LlmUnavailable):
            client.complete(ask("hi", timeout=5))
    assert fake.requests == []
    assert attempts == [PUBLIC]  # only the vetted address
    assert resolver.asked == 1


@pytest.fixture
def public_stand_in(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``api.example`` resolves to a public address, and dialling that address reaches this
    machine's loopback instead (there is no way out): the guarded path, end to end."""
    attempts: list[str] = []
    real_resolve, real_connect = socket.getaddrinfo, socket.create_connection

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "api.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC, port or 0))]
        return real_resolve(host, port, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(address[0]))
        target = "127.0.0.1" if address[0] == PUBLIC else address[0]
        return real_connect((target, address[1]), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_guarded_path_answers_and_holds_the_deadline(served, fake, public_stand_in, provider):
    base = f"http://api.example:{served[1].port}" + ("/v1" if provider == "openai" else "")
    with make_client(provider, {"api_key": KEY, "base_url": base}) as client:
        assert client.complete(ask("through the pinned connection")).text == "echo: through the pinned connection"
        assert client.complete(ask("again")).text == "echo: again"
        fake.script("LONG", text=" ".join(["word"] * 2000))
        fake.trickle_next(10)
        started = time.monotonic()
        with pytest.raises(LlmTimeout):
            client.complete(ask("LONG", timeout=1.5, max_tokens=5000))
        assert time.monotonic() - started < 8
    assert public_stand_in == [PUBLIC] * 3  # one connection per call, each to the checked address
    assert fake.requests[0].headers["host"].startswith("api.example")


def test_a_completion_counts_tokens_and_calls_by_the_model_that_answered(client, fake):
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    fake.model_aliases["fake-echo"] = "fake-metrics-2025-01-01"
    before = (value("shiftflow_llm_tokens_total", model="fake-metrics-2025-01-01", direction="input"),
              value("shiftflow_llm_calls_total", model="fake-metrics-2025-01-01", outcome="ok"))
    out = client.complete(ask("one two three"))
    after = (value("shiftflow_llm_tokens_total", model="fake-metrics-2025-01-01", direction="input"),
             value("shiftflow_llm_calls_total", model="fake-metrics-2025-01-01", outcome="ok"))
    assert (after[0] - before[0], after[1] - before[1]) == (out.tokens_in, 1)
    failed = value("shiftflow_llm_calls_total", model="no-such-model", outcome="error")
    with pytest.raises(PermanentError):
        client.complete(ask("hi", temperature=99.0, model="no-such-model"))  # refused before sending
    assert value("shiftflow_llm_calls_total", model="no-such-model", outcome="error") - failed == 1
