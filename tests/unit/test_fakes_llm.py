"""The fake LLM provider itself, over raw HTTP: it refuses what the real APIs refuse, its
schema answers are valid, markers and HTTP controls work, the ledger masks keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.fakes.llm_schema import instance_for


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer(FakeLlm()) as server:
        yield server


@pytest.fixture
def http(server: FakeLlmServer) -> Iterator[httpx.Client]:
    server.fake.reset()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


ANTHROPIC = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
OPENAI = {"authorization": "Bearer k"}


def messages(http: httpx.Client, body: dict[str, Any], headers: dict[str, str] = ANTHROPIC) -> httpx.Response:
    return http.post("/v1/messages", json=body, headers=headers)


def chat(http: httpx.Client, body: dict[str, Any], headers: dict[str, str] = OPENAI) -> httpx.Response:
    return http.post("/v1/chat/completions", json=body, headers=headers)


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        ({"model": "m", "messages": USER}, ANTHROPIC, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, *USER]}, ANTHROPIC,
         "Unexpected role 'system'"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]}, ANTHROPIC,
         "Each `tool_result` block must have a corresponding `tool_use` block"),
        ({"model": "m", "max_tokens": 5, "messages": USER}, {"x-api-key": "k"}, "anthropic-version"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]}, ANTHROPIC, "non-empty"),
        ({"model": "m", "max_tokens": 5, "messages": USER, "temperature": 1.5}, ANTHROPIC, "temperature"),
        ({"model": "m", "max_tokens": 5, "messages": USER,
          "tools": [{"name": "email.send", "input_schema": {"type": "object"}}]}, ANTHROPIC, "tools.0.name"),
    ],
)
def test_anthropic_refuses_what_the_real_api_refuses(http, body, headers, says):
    answer = messages(http, body, headers)
    assert answer.status_code == 400
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert says in error["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "m", "messages": USER, "response_format": {"type": "json_object"}}, "must contain the word 'json'"),
        ({"model": "m", "messages": [*USER, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
         "must be a response to a preceding message with 'tool_calls'"),
        ({"model": "m", "messages": USER, "tools": [{"type": "function", "function": {"name": "email.send"}}]},
         "tools[0].function.name"),
        ({"model": "m", "messages": USER, "tool_choice": "required"}, "'required' is only allowed when 'tools'"),
        ({"messages": USER}, "model"),
        ({"model": "m", "messages": USER, "max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
def test_openai_refuses_what_the_real_api_refuses(http, body, says):
    answer = chat(http, body)
    assert answer.status_code == 400
    assert says in answer.json()["error"]["message"]


def test_keys_are_required_and_the_ledger_masks_them(http, server):
    assert chat(http, {"model": "m", "messages": USER}, {}).status_code == 401
    assert messages(http, {"model": "m", "max_tokens": 5, "messages": USER}, {"anthropic-version": "x"}).status_code == 401
    assert chat(http, {"model": "m", "messages": USER}).status_code == 200
    # Newer Anthropic SDKs send the key as a bearer token: accepted too.
    bearer = {"authorization": "Bearer k", "anthropic-version": "2023-06-01"}
    assert messages(http, {"model": "m", "max_tokens": 5, "messages": USER}, bearer).status_code == 200
    records = http.get("/_fake/requests").json()[:3]
    assert [r["status"] for r in records] == [401, 401, 200]
    assert records[2]["headers"]["authorization"] == "***"
    assert "Bearer k" not in json.dumps(records)
    assert server.fake.requests[2].headers["authorization"] == "Bearer k"  # in-process, for assertions
    assert http.get("/_fake/counters").json() == {
        "requests": 4, "by_api": {"openai": 2, "anthropic": 2}, "by_status": {"401": 2, "200": 2}
    }


def test_usage_counts_words_of_messages_and_offered_tools(http):
    tool = {"name": "lookup", "description": "find a thing", "input_schema": {"type": "object"}}
    body = {"model": "m", "max_tokens": 50, "system": "be short", "messages": [{"role": "user", "content": "a b c"}],
            "tools": [tool]}
    usage = messages(http, body).json()["usage"]
    # "be short" (2) + "a b c" (3) + "lookup find a thing {"type": "object"}" (6) = 11; "echo: a b c" = 4 out.
    assert usage == {"input_tokens": 11, "output_tokens": 4, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 0}


def test_fail_marker_with_times_fails_then_answers(http):
    body = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "x [[fail 529 times=1]]"}]}
    first = messages(http, body)
    assert first.status_code == 529 and first.json()["error"]["type"] == "overloaded_error"
    second = messages(http, body)
    assert second.status_code == 200 and second.json()["content"][0]["text"] == "echo: x"
    limited = chat(http, {"model": "m", "messages": [{"role": "user", "content": "[[fail 429 retry-after=4]]"}]})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "4"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_controls_over_http(http):
    assert http.post("/_fake/fail", json={"status": 500, "count": 1, "api": "openai"}).status_code == 200
    assert messages(http, {"model": "m", "max_tokens": 5, "messages": USER}).status_code == 200  # other API
    assert chat(http, {"model": "m", "messages": USER}).status_code == 500
    assert http.post("/_fake/script", json={"marker": "WEATHER", "text": "sunny"}).status_code == 200
    answer = chat(http, {"model": "m", "messages": [{"role": "user", "content": "WEATHER today?"}]})
    assert answer.json()["choices"][0]["message"]["content"] == "sunny"
    assert http.post("/_fake/fail", json={"stauts": 500}).status_code == 400  # misspelt: named
    assert http.post("/_fake/nope", json={}).status_code == 404
    assert http.post("/_fake/reset", json={}).status_code == 200
    assert http.get("/_fake/requests").json() == []


def test_a_scripted_tool_call_on_both_apis(http, server):
    server.fake.script("BOOK", tool="calendar.book", arguments={"day": "monday"})
    tools_openai = [{"type": "function", "function": {"name": "calendar_book", "parameters": {"type": "object"}}}]
    answer = chat(http, {"model": "m", "messages": [{"role": "user", "content": "BOOK it"}], "tools": tools_openai})
    [call] = answer.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "calendar_book", "arguments": '{"day": "monday"}'}
    assert answer.json()["choices"][0]["finish_reason"] == "tool_calls"
    tools_anthropic = [{"name": "calendar_book", "input_schema": {"type": "object"}}]
    answer = messages(http, {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "BOOK it"}],
                             "tools": tools_anthropic})
    assert answer.json()["content"][0]["input"] == {"day": "monday"} and answer.json()["stop_reason"] == "tool_use"


SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string", "minLength": 10}, "b": {"type": "number", "exclusiveMinimum": 5}}},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "minItems": 3, "items": {"type": "null"}},
    {"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer", "maximum": -3}}, "required": ["x"]}},
     "type": "object", "properties": {"p": {"$ref": "#/$defs/pt"}, "q": {"type": "array", "items": {"$ref": "#/$defs/pt"}}}},
    {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]},
    {"allOf": [{"type": "object", "properties": {"a": {"const": 3}}}, {"required": ["b"], "properties": {"b": {"enum": ["x", "y"]}}}]},
    {"type": ["null", "string"], "maxLength": 2},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"}, "id": {"type": "string", "format": "uuid"},
                                      "mail": {"type": "string", "format": "email"}}, "additionalProperties": False},
    {"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]}, {"type": "string"}]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_answers_are_valid(schema):
    value = instance_for(schema)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    assert instance_for(schema) == value  # deterministic
