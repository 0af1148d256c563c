"""``http.request`` with a connection: each auth scheme goes on the request, only to the
connection's base_url, and never into a message; other integrations' credentials and
OAuth2 tokens reach it through ``connections.tool_credentials``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from shiftflow.fakes.oauth2 import FakeOAuth2Server
from shiftflow.fakes.prices import FakePriceServer
from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.integrations import IntegrationCatalogue, builtin_integrations
from shiftflow.kernel.integrations.connections import tool_credentials
from shiftflow.kernel.integrations.oauth2 import OAuth2Client
from shiftflow.kernel.redaction import MASK
from shiftflow.kernel.tools.base import ToolContext
from shiftflow.kernel.tools.http import TOOL as REQUEST
from tests.token_store import FakeStore
from tests.tool_servers import PageServer

CATALOGUE = IntegrationCatalogue(builtin_integrations())


@pytest.fixture
def api() -> Iterator[PageServer]:
    def echo(handler: Any) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"path": handler.path, "auth": handler.headers.get("Authorization"),
             "key": handler.headers.get("X-Key"), "version": handler.headers.get("Api-Version")}).encode()

    def leaky(handler: Any) -> tuple[int, dict[str, str], bytes]:
        return 400, {"Content-Type": "text/plain"}, f"bad request to {handler.path}".encode()

    server = PageServer({"/v1/items": echo, "/v1/leak": leaky, "/other": echo})
    yield server
    server.close()


def _call(params: dict[str, Any], credentials: dict[str, Any], tmp_path) -> dict[str, Any]:
    ctx = ToolContext(artifacts=LocalArtifactStore(tmp_path), credentials=credentials, allow_private=True)
    return REQUEST.call(params, ctx)


def test_each_auth_scheme_goes_on_the_request(api, tmp_path):
    base = {"base_url": api.url + "/v1"}
    header = _call({"url": "/items"}, {**base, "auth": "api_key_header", "header_name": "X-Key", "api_key": "k-1"},
                   tmp_path)
    assert header["json"]["key"] == "k-1" and header["json"]["path"] == "/v1/items"
    query = _call({"url": "items", "params": {"q": "x"}}, {**base, "auth": "api_key_query", "api_key": "k-2"},
                  tmp_path)
    assert query["json"]["path"] == "/v1/items?q=x&api_key=k-2"
    bearer = _call({"url": api.url + "/v1/items", "headers": {"authorization": "Bearer step-own"}},
                   {**base, "auth": "bearer", "token": "t-3", "headers": {"Api-Version": "7"}}, tmp_path)
    assert bearer["json"]["auth"] == "Bearer t-3" and bearer["json"]["version"] == "7"  # the connection wins
    basic = _call({"url": "/items"}, {**base, "auth": "basic", "username": "ann", "password": "p:w"}, tmp_path)
    assert basic["json"]["auth"] == "Basic " + base64.b64encode(b"ann:p:w").decode()


@pytest.mark.parametrize("url", ["{url}/other", "http://example.com/v1/items", "{url}/v1/../other",
                                 "{url}/v1/%2e%2e/other", "http://user@127.0.0.1/v1/items", "{url}/v10/items"])
def test_credentials_go_only_under_the_base_url(api, tmp_path, url):
    creds = {"base_url": api.url + "/v1", "auth": "bearer", "token": "secret-token-9"}
    with pytest.raises(ToolError, match="outside the connection's base_url") as caught:
        _call({"url": url.format(url=api.url)}, creds, tmp_path)
    assert "secret-token-9" not in str(caught.value)
    assert api.requests == []


def test_a_key_echoed_in_an_error_is_masked(api, tmp_path):
    creds = {"base_url": api.url + "/v1", "auth": "api_key_query", "api_key": "very-secret-key"}
    with pytest.raises(ToolError) as caught:
        _call({"url": "/leak"}, creds, tmp_path)
    assert "very-secret-key" not in str(caught.value) and f"api_key={MASK}" in str(caught.value)


def test_a_scheme_without_a_base_url_is_refused(api, tmp_path):
    with pytest.raises(ToolError, match="base_url is missing"):
        _call({"url": api.url + "/v1/items"}, {"auth": "bearer", "token": "t"}, tmp_path)
    assert api.requests == []


def test_an_oauth2_connection_becomes_a_fresh_bearer_token(tmp_path):
    with FakeOAuth2Server() as idp:
        idp.register("app", "client-secret-1")
        creds = {"token_url": idp.token_url, "client_id": "app", "client_secret": "client-secret-1",
                 "grant_type": "client_credentials", "base_url": idp.url}
        store = FakeStore(creds, connection_id="c1")
        oauth2 = OAuth2Client(allow_private=True, timeout=5)
        given = tool_credentials(CATALOGUE.get("oauth2"), "http.request", "c1", creds, oauth2=oauth2, store=store)
        assert given == {"auth": "bearer", "token": store.rows["c1"]["access_token"], "base_url": idp.url}
        assert _call({"url": "/resource"}, given, tmp_path)["json"] == {"ok": True}
        # The next call reuses the stored token: no second token request.
        again = tool_credentials(CATALOGUE.get("oauth2"), "http.request", "c1", store.rows["c1"], oauth2=oauth2,
                                 store=store)
        assert again == given and len(idp.token_requests) == 1


def test_an_api_integration_maps_its_credentials_for_http_request(tmp_path):
    with FakePriceServer(api_key="cg-key-1") as prices:
        creds = {"api_key": "cg-key-1", "plan": "demo", "base_url": prices.url}
        given = tool_credentials(CATALOGUE.get("coingecko"), "http.request", "c2", creds,
                                 oauth2=OAuth2Client(), store=FakeStore())
        assert given["header_name"] == "x-cg-demo-api-key"
        assert _call({"url": "/api/v3/ping"}, given, tmp_path)["status"] == 200
    smtp = {"host": "mail.example"}
    assert tool_credentials(CATALOGUE.get("smtp"), "email.send", "c3", smtp, oauth2=OAuth2Client(),
                            store=FakeStore()) == smtp
