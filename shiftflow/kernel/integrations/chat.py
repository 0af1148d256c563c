"""The ``slack`` and ``discord`` integrations: incoming chat webhooks ``notify.chat`` posts to.

The webhook URL is the secret (it carries the token). A test never posts:

* Slack (and Slack-compatible servers such as Mattermost): the URL's shape is checked
  (``hooks.slack.com/services/T…/B…/…``), then its host is asked ``HEAD``. Slack has no
  way to check an incoming webhook's token without posting a message, so the result is
  ``unverified`` and says so.
* Discord: ``GET`` on the webhook URL returns the webhook (its name and channel) without
  posting anything, so a deleted webhook or a wrong token fails the test.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from shiftflow.kernel.errors import ToolError, ToolUnavailable
from shiftflow.kernel.integrations import probe
from shiftflow.kernel.integrations.base import (
    CheckContext,
    CheckResult,
    Integration,
    RateLimits,
    passed,
    unverified,
)
from shiftflow.kernel.integrations.secrets import secret
from shiftflow.kernel.tools import http

_SLACK_HOSTS = ("hooks.slack.com",)
_SLACK_PATH = re.compile(r"^/(services|workflows|triggers)(/[A-Za-z0-9_-]+){2,4}/?$")
_DISCORD_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com")
_DISCORD_PATH = re.compile(r"^/api(/v\d+)?/webhooks/\d+/[A-Za-z0-9_-]+/?$")


def _schema(flavour: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["webhook_url"],
        "properties": {
            "webhook_url": secret({"type": "string", "pattern": r"^https?://[^\s#]+$", "maxLength": 2048,
                                   "description": "The incoming webhook's URL (it carries the token)."}),
            # notify.chat reads the payload shape from here; fixed by the integration.
            "format": {"const": flavour, "default": flavour},
        },
    }


def _shape(url: str, hosts: tuple[str, ...], path: re.Pattern[str], example: str) -> bool:
    """True when ``url`` is on one of ``hosts`` (then its path must match), False for another host."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host not in hosts:
        return False
    if parts.scheme != "https" or not path.match(parts.path):
        raise ToolError(f"credentials.webhook_url: not a webhook URL of {host} (expected {example})")
    return True


def check_slack(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """Check the URL's shape and that its host answers; nothing is posted."""
    url = str(credentials["webhook_url"])
    official = _shape(url, _SLACK_HOSTS, _SLACK_PATH, "https://hooks.slack.com/services/T…/B…/…")
    # Any answer shows the host is there: the endpoint takes POSTs only, so a 401, 404,
    # 405 or 501 to HEAD says nothing about the token. Only a gateway failing is a failure.
    answer = http.exchange({"url": url, "method": "HEAD"}, timeout=ctx.timeout, allow_private=ctx.allow_private)
    if answer.status in (502, 503, 504):
        raise ToolUnavailable(f"the webhook's host answered HEAD with {answer.status}")
    host = urlsplit(url).hostname
    kind = "a Slack webhook URL" if official else f"a Slack-compatible webhook URL on {host}"
    return unverified(f"{kind}; its host answered HEAD with {answer.status}. Slack offers no way to check a "
                      "webhook's token without posting a message, so the token itself is not checked",
                      status=answer.status)


def check_discord(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """GET the webhook (Discord returns it without posting); a deleted one fails."""
    url = str(credentials["webhook_url"])
    _shape(url, _DISCORD_HOSTS, _DISCORD_PATH, "https://discord.com/api/webhooks/<id>/<token>")
    answer = probe.get(url, ctx, refused="Discord refuses this webhook's token")
    if answer.status == 404:
        raise ToolError("Discord does not know this webhook (GET answered 404): it was deleted or its URL is wrong")
    if answer.status != 200:
        return unverified(f"GET on the webhook answered {answer.status}; the server may not be Discord itself",
                          status=answer.status)
    hook = probe.json_body(answer)
    if not isinstance(hook, dict) or "id" not in hook:
        return unverified("GET on the webhook answered 200 without a webhook object; the server may not be "
                          "Discord itself", status=answer.status)
    details = {k: hook[k] for k in ("name", "channel_id", "guild_id") if isinstance(hook.get(k), str)}
    return passed(f"Discord webhook {details.get('name', '')!r} of channel {details.get('channel_id', '?')}",
                  **details)


SLACK = Integration(
    key="slack",
    name="Slack incoming webhook",
    description="Post messages to a Slack channel (or a Slack-compatible server) through an incoming webhook.",
    category="communication",
    auth_type="API_KEY",
    credentials_schema=_schema("slack"),
    test=check_slack,
    tools=("notify.chat",),
    # Slack: about one message a second per webhook, short bursts tolerated.
    limits=RateLimits(per_second=1, burst=3),
    docs_url="https://api.slack.com/messaging/webhooks",
)

DISCORD = Integration(
    key="discord",
    name="Discord webhook",
    description="Post messages to a Discord channel through a webhook.",
    category="communication",
    auth_type="API_KEY",
    credentials_schema=_schema("discord"),
    test=check_discord,
    tools=("notify.chat",),
    # Discord: 5 requests per 2 seconds per webhook, 30 messages a minute per channel.
    limits=RateLimits(per_second=2.5, per_minute=30, burst=5),
    docs_url="https://discord.com/developers/docs/resources/webhook",
)
