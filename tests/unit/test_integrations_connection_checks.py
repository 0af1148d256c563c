"""Each integration's harmless connection test against a real local server: HTTP APIs and
webhooks (loopback HTTP servers), SMTP (aiosmtpd with STARTTLS and AUTH), S3 (moto_server),
SideShift and CoinGecko (the project's fakes), OAuth2 (shiftflow/fakes/oauth2.py).

Each checks the outcome (passed, failed, unverified), that a failure says whether it may
pass later, that nothing is sent, posted or stored by a test, and that no message or
detail holds a secret."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from shiftflow.fakes.oauth2 import FakeOAuth2Server
from shiftflow.fakes.prices import FakePriceServer
from shiftflow.fakes.sideshift import FakeSideShiftServer
from shiftflow.kernel.integrations import (
    CheckContext,
    IntegrationCatalogue,
    builtin_integrations,
    check_connection,
)
from shiftflow.kernel.integrations.base import CheckResult
from shiftflow.kernel.integrations.oauth2 import OAuth2Client
from shiftflow.kernel.settings import Settings
from tests.token_store import FakeStore
from tests.tool_servers import MotoServer, PageServer, SelfSigned, SmtpServer, free_port, self_signed

CATALOGUE = IntegrationCatalogue(builtin_integrations())
CTX = CheckContext(timeout=5.0, allow_private=True)


def _check(key: str, credentials: dict[str, Any], ctx: CheckContext = CTX) -> CheckResult:
    return check_connection(CATALOGUE.get(key), credentials, ctx)


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _no_secret(result: CheckResult, *secrets: str) -> None:
    shown = json.dumps(result.to_dict())
    for value in secrets:
        assert value not in shown


# -- http ---------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[PageServer]:
    def me(handler: Any) -> tuple[int, dict[str, str], bytes]:
        if handler.headers.get("X-API-Key") == "good-key-123":
            return _json(200, {"me": "robot"})
        return _json(401, {"error": "bad key"})

    server = PageServer({"/v1/me": me, "/v1": _json(200, {"hello": "anyone"})})
    yield server
    server.close()


def test_http_gets_the_test_path_with_the_key(api):
    creds = {"auth": "api_key_header", "base_url": api.url + "/v1", "api_key": "good-key-123", "test_path": "/me"}
    result = _check("http", creds)
    assert (result.status, result.test_status) == ("passed", "SUCCESS")
    assert api.requests[-1]["headers"]["X-API-Key"] == "good-key-123" and api.requests[-1]["path"] == "/v1/me"
    refused = _check("http", {**creds, "api_key": "wrong-key-456"})
    assert (refused.status, refused.retryable) == ("failed", False) and "credentials were refused" in refused.message
    _no_secret(refused, "wrong-key-456")


def test_http_without_a_test_path_can_only_say_the_api_answers(api):
    result = _check("http", {"auth": "bearer", "base_url": api.url + "/v1", "token": "tok-abcdef"})
    assert (result.status, result.test_status) == ("unverified", "PENDING") and "set test_path" in result.message


def test_http_unreachable_is_a_retryable_failure_and_bad_credentials_never_call():
    down = _check("http", {"auth": "none", "base_url": f"http://127.0.0.1:{free_port()}"})
    assert (down.status, down.retryable) == ("failed", True)
    invalid = _check("http", {"auth": "api_key_header", "base_url": "http://127.0.0.1:1"})
    assert invalid.message == "credentials.api_key: required" and not invalid.retryable


def test_http_obeys_the_address_rules():
    result = _check("http", {"auth": "none", "base_url": "http://127.0.0.1:9/"}, CheckContext(timeout=2))
    assert result.status == "failed" and "not a public address" in result.message


# -- smtp ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> SelfSigned:
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def smtp(cert) -> Iterator[SmtpServer]:
    server = SmtpServer(cert)
    yield server
    server.stop()


def test_smtp_logs_in_over_starttls_and_sends_nothing(smtp, cert):
    result = _check("smtp", smtp.credentials(cert))
    assert result.status == "passed" and "logged in" in result.message
    assert smtp.handler.logins == ["mailer"] and smtp.handler.messages == []
    assert result.details["security"] == "starttls" and "STARTTLS".lower() not in result.details["extensions"]


def test_smtp_wrong_password_fails_for_good_and_a_down_server_may_pass_later(smtp, cert):
    wrong = _check("smtp", smtp.credentials(cert, password="not-the-password"))
    assert (wrong.status, wrong.retryable) == ("failed", False) and "authentication refused" in wrong.message
    _no_secret(wrong, "not-the-password")
    down = _check("smtp", {**smtp.credentials(cert), "port": free_port()})
    assert (down.status, down.retryable) == ("failed", True) and "unavailable" in down.message
    untrusted = _check("smtp", {k: v for k, v in smtp.credentials(cert).items() if k != "tls_ca_pem"})
    assert (untrusted.status, untrusted.retryable) == ("failed", False) and "certificate" in untrusted.message


# -- chat webhooks ------------------------------------------------------------------------


@pytest.fixture
def hooks() -> Iterator[PageServer]:
    server = PageServer({
        "/api/webhooks/42/hook-token-secret": _json(200, {"id": "42", "name": "deploys", "channel_id": "777",
                                                          "guild_id": "9", "token": "hook-token-secret"}),
    })
    yield server
    server.close()


def test_slack_checks_the_shape_and_the_host_but_posts_nothing(hooks):
    url = hooks.url + "/services/T000/B000/slack-token-secret"
    result = _check("slack", {"webhook_url": url})
    assert result.status == "unverified" and "without posting" in result.message
    assert hooks.requests == []  # HEAD only (answered 501 by this server): nothing posted
    _no_secret(result, "slack-token-secret")
    malformed = _check("slack", {"webhook_url": "https://hooks.slack.com/services/nope"})
    assert malformed.status == "failed" and "not a webhook URL of hooks.slack.com" in malformed.message
    _no_secret(malformed, "services/nope")


def test_discord_reads_the_webhook_without_posting(hooks):
    result = _check("discord", {"webhook_url": hooks.url + "/api/webhooks/42/hook-token-secret"})
    assert result.status == "passed" and result.details == {"name": "deploys", "channel_id": "777", "guild_id": "9"}
    assert [r["method"] for r in hooks.requests] == ["GET"]
    _no_secret(result, "hook-token-secret")
    gone = _check("discord", {"webhook_url": hooks.url + "/api/webhooks/43/deleted-token-x"})
    assert (gone.status, gone.retryable) == ("failed", False) and "deleted" in gone.message
    _no_secret(gone, "deleted-token-x")


# -- s3 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


def test_s3_heads_the_bucket(moto):
    bucket = f"conn-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    creds = {"bucket": bucket, "endpoint_url": moto.url, "access_key_id": "testing",
             "secret_access_key": "s3-secret-key-value"}
    result = _check("s3", creds)
    assert result.status == "passed" and bucket in result.message
    missing = _check("s3", {**creds, "bucket": "no-such-bucket-here"})
    assert (missing.status, missing.retryable) == ("failed", False) and "does not exist" in missing.message
    down = _check("s3", {**creds, "endpoint_url": f"http://127.0.0.1:{free_port()}"})
    assert (down.status, down.retryable) == ("failed", True)
    refused = _check("s3", creds, CheckContext(timeout=2))
    assert refused.status == "failed" and "not a public address" in refused.message


# -- sideshift and coingecko --------------------------------------------------------------


def test_sideshift_answers_but_cannot_prove_the_secret_and_a_blocked_address_fails():
    with FakeSideShiftServer() as server:
        settings = Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_SIDESHIFT_BASE_URL": server.base_url})
        ctx = CheckContext(timeout=5, allow_private=True, settings=settings)
        creds = {"affiliate_id": "AbCdE1234", "secret": "sideshift-secret-1"}
        result = _check("sideshift", creds, ctx)
        assert result.status == "unverified" and "allows shifts" in result.message
        server.state.block_ip("127.0.0.1")
        blocked = _check("sideshift", creds, ctx)
        assert (blocked.status, blocked.retryable) == ("failed", False) and "restricted" in blocked.message


def test_coingecko_pings_with_the_key():
    with FakePriceServer(api_key="cg-demo-key-1") as prices:
        good = _check("coingecko", {"api_key": "cg-demo-key-1", "base_url": prices.url})
        assert good.status == "passed" and "demo key" in good.message
        bad = _check("coingecko", {"api_key": "cg-wrong-key", "base_url": prices.url})
        assert (bad.status, bad.retryable) == ("failed", False) and "refused the API key" in bad.message
        _no_secret(bad, "cg-wrong-key")
    with FakePriceServer() as public:
        assert _check("coingecko", {"base_url": public.url}).message == "CoinGecko's public API answers (no key given)"
    assert _check("coingecko", {"plan": "pro"}).message == "credentials.api_key: required"


# -- LLM providers ------------------------------------------------------------------------


@pytest.fixture
def providers() -> Iterator[PageServer]:
    models = _json(200, {"data": [{"id": "model-a"}, {"id": "model-b"}]})

    def openai(handler: Any) -> tuple[int, dict[str, str], bytes]:
        ok = handler.headers.get("Authorization") == "Bearer sk-good" and handler.headers.get("OpenAI-Project") == "p1"
        return models if ok else _json(401, {"error": {"message": "Incorrect API key provided: sk-bad"}})

    def anthropic(handler: Any) -> tuple[int, dict[str, str], bytes]:
        ok = handler.headers.get("x-api-key") == "ant-good" and handler.headers.get("anthropic-version") == "2023-06-01"
        return models if ok else _json(401, {"type": "error", "error": {"type": "authentication_error"}})

    server = PageServer({"/openai/v1/models": openai, "/anthropic/v1/models": anthropic})
    yield server
    server.close()


def test_llm_providers_list_their_models_with_the_key(providers):
    good = _check("openai", {"api_key": "sk-good", "project": "p1", "base_url": providers.url + "/openai/v1"})
    assert good.status == "passed" and good.details == {"models": 2}
    bad = _check("openai", {"api_key": "sk-bad", "project": "p1", "base_url": providers.url + "/openai/v1"})
    assert (bad.status, bad.retryable) == ("failed", False) and "OpenAI refused the API key" in bad.message
    assert _check("anthropic", {"api_key": "ant-good", "base_url": providers.url + "/anthropic/v1"}).status == "passed"
    refused = _check("anthropic", {"api_key": "ant-bad", "base_url": providers.url + "/anthropic/v1"})
    assert refused.status == "failed" and "Anthropic refused" in refused.message


# -- oauth2 -------------------------------------------------------------------------------


@pytest.fixture
def idp() -> Iterator[FakeOAuth2Server]:
    with FakeOAuth2Server(rotate=True) as server:
        server.register("app", "client-secret-1")
        yield server


def _oauth_ctx(**more: Any) -> CheckContext:
    return CheckContext(timeout=5, allow_private=True, oauth2=OAuth2Client(allow_private=True, timeout=5), **more)


def test_oauth2_client_credentials_fetches_a_token_and_calls_the_test_path(idp):
    creds = {"token_url": idp.token_url, "client_id": "app", "client_secret": "client-secret-1",
             "base_url": idp.url, "test_path": "/resource", "scope": ["read"]}
    result = _check("oauth2", creds, _oauth_ctx())
    assert result.status == "passed" and "issued a token" in result.message and "GET " in result.message
    assert result.details == {"scope": "read"}
    wrong = _check("oauth2", {**creds, "client_secret": "wrong-client-secret"}, _oauth_ctx())
    assert (wrong.status, wrong.retryable) == ("failed", False) and "invalid_client" in wrong.message
    _no_secret(wrong, "wrong-client-secret")


def test_oauth2_refresh_token_is_tested_through_the_store_and_the_rotation_is_kept(idp):
    refresh = idp.issue_refresh_token("app", scope="read")
    creds = {"token_url": idp.token_url, "client_id": "app", "client_secret": "client-secret-1",
             "grant_type": "refresh_token", "refresh_token": refresh}
    without_store = _check("oauth2", creds, _oauth_ctx())
    assert without_store.status == "failed" and "token store" in without_store.message
    assert idp.token_requests == []
    store = FakeStore(creds, connection_id="c1")
    result = _check("oauth2", creds, _oauth_ctx(tokens=store, connection_id="c1"))
    assert result.status == "passed" and "rotated" in result.message
    assert store.rows["c1"]["refresh_token"] == idp.active_refresh_tokens()[0] != refresh
    _no_secret(result, refresh, store.rows["c1"]["refresh_token"], store.rows["c1"]["access_token"])
    idp.revoke(store.rows["c1"]["refresh_token"])
    revoked = _check("oauth2", store.rows["c1"], _oauth_ctx(tokens=store, connection_id="c1"))
    assert (revoked.status, revoked.retryable) == ("failed", False) and "needs re-authorisation" in revoked.message
