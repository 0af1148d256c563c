"""``notify.chat`` against a real local webhook server that checks each service's
documented payload shape; a 429 surfaces Retry-After's seconds."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import RateLimited, ToolError
from shiftflow.kernel.tools.base import InvalidParameters, ToolContext
from shiftflow.kernel.tools.chat import TOOL as CHAT
from tests.tool_servers import PageServer


def _slack(handler):
    body = json.loads(handler.body)
    # Slack's incoming webhook: a JSON object with `text` (and optional `blocks`), else invalid_payload.
    ok = handler.headers.get("Content-Type") == "application/json" and isinstance(body.get("text"), str) \
        and set(body) <= {"text", "blocks", "username", "icon_url"}
    return (200, {"Content-Type": "text/plain"}, b"ok") if ok else (400, {}, b"invalid_payload")


def _discord(handler):
    body = json.loads(handler.body)
    ok = isinstance(body.get("content"), str) and "text" not in body
    return (204, {}, b"") if ok else (400, {"Content-Type": "application/json"}, b'{"message": "Cannot send an empty message", "code": 50006}')


@pytest.fixture
def hooks() -> Iterator[PageServer]:
    server = PageServer({
        "/services/T000/B000/XXXX": _slack,
        "/api/webhooks/1/token": _discord,
        "/limited": (429, {"Retry-After": "12", "Content-Type": "application/json"},
                     b'{"message": "You are being rate limited.", "retry_after": 12.0, "global": false}'),
        "/archived": (410, {"Content-Type": "text/plain"}, b"channel_is_archived"),
    })
    yield server
    server.close()


def _ctx(tmp_path, **credentials) -> ToolContext:
    return ToolContext(artifacts=LocalArtifactStore(tmp_path), credentials=credentials, allow_private=True)


def _bodies(server: PageServer) -> list[dict]:
    return [json.loads(r["body"]) for r in server.requests]


def test_slack_payload(hooks, tmp_path):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Deployed* v2"}}]
    out = CHAT.call({"text": "Deployed v2", "blocks": blocks},
                    _ctx(tmp_path, webhook_url=f"{hooks.url}/services/T000/B000/XXXX"))
    assert out == {"status": 200, "format": "slack"}
    assert _bodies(hooks) == [{"text": "Deployed v2", "blocks": blocks}]


def test_discord_payload(hooks, tmp_path):
    ctx = _ctx(tmp_path, webhook_url=f"{hooks.url}/api/webhooks/1/token", format="discord")
    out = CHAT.call({"text": "Deployed v2", "username": "ShiftFlow"}, ctx)
    assert out == {"status": 204, "format": "discord"}
    assert _bodies(hooks) == [{"content": "Deployed v2", "username": "ShiftFlow"}]
    with pytest.raises(ToolError, match="Discord accepts at most 2000 characters"):
        CHAT.call({"text": "x" * 2001}, ctx)


def test_a_429_is_rate_limited_with_the_retry_after_seconds(hooks, tmp_path):
    with pytest.raises(RateLimited) as caught:
        CHAT.call({"text": "hi"}, _ctx(tmp_path, webhook_url=f"{hooks.url}/limited"))
    assert caught.value.retry_after == 12.0


def test_refusals_and_bad_input_are_permanent(hooks, tmp_path):
    with pytest.raises(ToolError, match="answered 410: 'channel_is_archived'"):
        CHAT.call({"text": "hi"}, _ctx(tmp_path, webhook_url=f"{hooks.url}/archived"))
    with pytest.raises(InvalidParameters, match="with.text: '' should be non-empty"):
        CHAT.call({"text": ""}, _ctx(tmp_path, webhook_url=f"{hooks.url}/limited"))
    with pytest.raises(ToolError, match="credential 'webhook_url' is missing"):
        CHAT.call({"text": "hi"}, _ctx(tmp_path))
    assert [r["path"] for r in hooks.requests] == ["/archived"]  # bad input never left


def test_private_webhook_addresses_are_refused_unless_allowed(hooks, tmp_path):
    ctx = ToolContext(artifacts=LocalArtifactStore(tmp_path), allow_private=False,
                      credentials={"webhook_url": f"{hooks.url}/services/T000/B000/XXXX"})
    with pytest.raises(ToolError, match="not a public address"):
        CHAT.call({"text": "hi"}, ctx)
    assert hooks.requests == []
