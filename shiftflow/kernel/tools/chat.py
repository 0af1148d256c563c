"""``notify.chat``: post a message to a Slack- or Discord-compatible incoming webhook.

The webhook URL is the connection's secret (``webhook_url``; it carries the token), and
the call goes through the HTTP tool (``http.call``): same client, timeout, size cap and
SSRF guard. Payload shapes are each service's documented ones:

* Slack: ``{"text": ..., "blocks": [...]}`` (``text`` is the notification fallback when
  blocks are given); the answer is ``200 ok``.
* Discord: ``{"content": ..., "username": ..., "avatar_url": ..., "embeds": [...]}``
  (content at most 2000 characters); the answer is ``204 No Content``.

A 429 is ``RateLimited`` with the ``Retry-After`` seconds (both services send it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.tools import http
from shiftflow.kernel.tools.base import Tool, ToolContext

FLAVOURS = ("slack", "discord")
#: Discord refuses longer ``content`` (its documented limit).
DISCORD_CONTENT_MAX = 2000


def flavour_of(url: str, declared: str | None) -> str:
    """The payload shape to use: the connection's ``format``, else guessed from the URL's host."""
    if declared:
        if declared not in FLAVOURS:
            raise ToolError(f"connection: format {declared!r} is not one of {', '.join(FLAVOURS)}")
        return declared
    host = (urlsplit(url).hostname or "").lower()
    return "discord" if host.endswith(("discord.com", "discordapp.com")) else "slack"


def payload(params: dict[str, Any], flavour: str) -> dict[str, Any]:
    """The JSON body for ``flavour`` from the tool's parameters."""
    if flavour == "discord":
        body: dict[str, Any] = {"content": params["text"]}
        if len(params["text"]) > DISCORD_CONTENT_MAX:
            raise ToolError(f"with.text: Discord accepts at most {DISCORD_CONTENT_MAX} characters")
        if params.get("username"):
            body["username"] = params["username"]
        if params.get("icon_url"):
            body["avatar_url"] = params["icon_url"]
        if params.get("embeds"):
            body["embeds"] = params["embeds"]
        return body
    body = {"text": params["text"]}
    if params.get("blocks"):
        body["blocks"] = params["blocks"]
    # Legacy Slack webhooks honour these; app webhooks ignore them (harmless).
    if params.get("username"):
        body["username"] = params["username"]
    if params.get("icon_url"):
        body["icon_url"] = params["icon_url"]
    return body


def post(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Post one message (the ``notify.chat`` tool's function).

    Returns:
        ``{"status", "format"}``.

    Raises:
        RateLimited: 429 (``retry_after`` from ``Retry-After``).
        ToolUnavailable: timeout, refused connection, 5xx.
        ToolError: any other refusal (a 4xx: bad payload, revoked webhook, archived channel).
    """
    url = str(ctx.credential("webhook_url"))
    flavour = flavour_of(url, ctx.credentials.get("format"))
    answer = http.call(
        {"url": url, "method": "POST", "json": payload(params, flavour)},
        timeout=ctx.limits.http_timeout,
        allow_private=ctx.allow_private,
    )
    return {"status": answer["status"], "format": flavour}


TOOL = Tool(
    name="notify.chat",
    description="Post a message to a Slack- or Discord-compatible incoming webhook.",
    category="notify",
    queue="tools",
    effect="once",
    integration="chat_webhook",
    params_schema={
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": 40_000},
            "username": {"type": "string", "maxLength": 80},
            "icon_url": {"type": "string", "maxLength": 2048},
            "blocks": {"type": "array", "items": {"type": "object"}, "maxItems": 50},
            "embeds": {"type": "array", "items": {"type": "object"}, "maxItems": 10},
        },
    },
    result_schema={
        "type": "object",
        "required": ["status", "format"],
        "properties": {"status": {"type": "integer"}, "format": {"enum": list(FLAVOURS)}},
    },
    run=post,
)
