"""What a tool call is given for a connection: its credentials in the shape the tool reads.

The engine decrypts a connection's credentials and calls ``tool_credentials`` before it
builds the ``ToolContext``:

* an OAuth2 connection becomes a bearer one (``{"auth": "bearer", "token", "base_url"}``)
  with a fresh access token, refreshed and stored through the token client when needed;
* an integration with ``http_credentials`` (CoinGecko, OpenAI, Anthropic, a plugin's API)
  is mapped to the ``http.request`` tool's shape when that tool is called;
* any other connection's credentials pass as they are (``smtp`` for ``email.send``,
  ``slack``/``discord`` for ``notify.chat``, ``http`` for ``http.request``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.integrations.base import Integration
from shiftflow.kernel.integrations.oauth2 import OAuth2Client, TokenStore


def tool_credentials(integration: Integration, tool: str, connection_id: str, credentials: Mapping[str, Any], *,
                     oauth2: OAuth2Client, store: TokenStore, rejected: str | None = None) -> dict[str, Any]:
    """The credentials to put in ``ToolContext.credentials`` for ``tool`` and this connection.

    Parameters:
        integration: the connection's catalogue entry (``IntegrationCatalogue.check_tool``
            has checked that it serves ``tool``).
        tool: the tool about to be called.
        connection_id / credentials: the connection and its decrypted credentials.
        oauth2 / store: the token client and the token store, for OAuth2 connections.
        rejected: an access token the service just refused (401): a new one is fetched.

    Raises:
        ReauthorisationRequired, OAuth2Error, RateLimited, ToolUnavailable: from a token refresh.
    """
    if integration.auth_type == "OAUTH2":
        tokens = oauth2.token(connection_id, credentials, store, rejected=rejected)
        out: dict[str, Any] = {"auth": "bearer", "token": tokens.access_token}
        if credentials.get("base_url"):
            out["base_url"] = str(credentials["base_url"])
        return out
    if tool == "http.request" and integration.http_credentials is not None:
        return integration.http_credentials(credentials)
    return dict(credentials)
