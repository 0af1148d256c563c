"""The OAuth2 token client against a real local authorisation server (shiftflow/fakes/oauth2.py):
both grants, both client authentications, expiry and the refresh margin, refresh-token
rotation, invalid_grant, a slow server, and one refresh for two concurrent callers (in
this process, and across two clients sharing only Redis)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shiftflow.fakes.oauth2 import FakeOAuth2Server
from shiftflow.kernel.errors import NotFound, RateLimited, ToolError, ToolUnavailable
from shiftflow.kernel.integrations.locks import LocalLocks, LockTimeout, RedisLocks
from shiftflow.kernel.integrations.oauth2 import OAuth2Client, OAuth2Error, ReauthorisationRequired, TokenSet
from tests.token_store import FakeStore


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FakeOAuth2Server]:
    with FakeOAuth2Server() as running:
        running.register("app", "s3cret-client")
        yield running


def _client(**more: Any) -> OAuth2Client:
    return OAuth2Client(**{"timeout": 5.0, "allow_private": True, **more})


def _cc(server: FakeOAuth2Server, **more: Any) -> dict[str, Any]:
    return {"token_url": server.token_url, "client_id": "app", "client_secret": "s3cret-client",
            "grant_type": "client_credentials", **more}


def _rt(server: FakeOAuth2Server, refresh: str, **more: Any) -> dict[str, Any]:
    return {**_cc(server), "grant_type": "refresh_token", "refresh_token": refresh, **more}


def test_client_credentials_with_basic_and_post_authentication_and_scopes(server):
    client = _client()
    tokens = client.request_token(_cc(server, scope=["read", "write"]))
    assert tokens.access_token.startswith("at-") and tokens.scope == "read write"
    assert tokens.expires_at is not None and tokens.refresh_token is None
    posted = client.request_token(_cc(server, auth_method="client_secret_post", scope="read"))
    assert posted.scope == "read"
    first, second = server.token_requests
    assert (first.auth_method, first.grant_type, first.form["scope"]) == ("client_secret_basic", "client_credentials",
                                                                        "read write")
    assert "client_secret" not in first.form
    assert (second.auth_method, second.form["client_secret"]) == ("client_secret_post", "s3cret-client")


def test_a_client_secret_with_reserved_characters_is_form_encoded_for_basic(server):
    # RFC 6749 2.3.1: id and secret are form-encoded before Basic; ':' in a secret must survive.
    server.register("app:2", "p@ss:w rd+")
    tokens = _client().request_token(_cc(server, client_id="app:2", client_secret="p@ss:w rd+"))
    assert tokens.access_token


def test_a_refused_client_is_permanent_and_its_secret_never_shows(server):
    with pytest.raises(OAuth2Error) as caught:
        _client().request_token(_cc(server, client_secret="wrong-secret-value"))
    assert caught.value.code == "invalid_client" and "client authentication failed" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)
    assert not isinstance(caught.value, ReauthorisationRequired)


def test_a_fresh_token_is_used_without_a_request_and_refreshed_before_expiry(server):
    clock = Clock()
    client = _client(clock=clock, margin=60.0)
    store = FakeStore(_cc(server))
    first = client.token("conn-1", store.load("conn-1"), store)
    assert len(server.token_requests) == 1 and store.saves[0][1] == first
    assert first.expires_at == clock.now + 3600
    # Still fresh: the stored token is used as it is.
    clock.now += 3000
    assert client.token("conn-1", store.load("conn-1"), store).access_token == first.access_token
    assert len(server.token_requests) == 1
    # Within the margin (60 s before expiry): refreshed and stored again.
    clock.now += 541
    second = client.token("conn-1", store.load("conn-1"), store)
    assert second.access_token != first.access_token and len(server.token_requests) == 2
    assert store.rows["conn-1"]["access_token"] == second.access_token
    assert store.rows["conn-1"]["client_secret"] == "s3cret-client"  # merge keeps the client


def test_the_margin_is_at_most_half_a_short_lifetime(server):
    server.expires_in = 40  # shorter than the margin: it must not be refreshed on every call
    clock = Clock()
    client = _client(clock=clock, margin=60.0)
    store = FakeStore(_cc(server))
    token = client.token("conn-1", store.load("conn-1"), store)
    clock.now += 19
    assert client.token("conn-1", store.load("conn-1"), store) == token
    clock.now += 2
    assert client.token("conn-1", store.load("conn-1"), store) != token
    assert len(server.token_requests) == 2


def test_refresh_token_rotation_is_stored_and_the_old_token_is_dead(server):
    server.rotate = True
    refresh = server.issue_refresh_token("app", scope="read")
    clock = Clock()
    client = _client(clock=clock)
    store = FakeStore(_rt(server, refresh))
    tokens = client.token("conn-1", store.load("conn-1"), store)
    assert tokens.refresh_token not in (None, refresh)
    assert store.rows["conn-1"]["refresh_token"] == tokens.refresh_token
    assert server.active_refresh_tokens() == [tokens.refresh_token]
    assert tokens.scope == "read" and store.rows["conn-1"]["granted_scope"] == "read"
    # The next refresh presents the rotated token (read again from the store), and works.
    clock.now += 3600
    again = client.token("conn-1", store.load("conn-1"), store)
    assert server.token_requests[-1].form["refresh_token"] == tokens.refresh_token
    assert again.refresh_token not in (tokens.refresh_token, refresh)


def test_without_rotation_the_old_refresh_token_is_kept(server):
    refresh = server.issue_refresh_token("app")
    store = FakeStore(_rt(server, refresh))
    tokens = _client().token("conn-1", store.load("conn-1"), store)
    assert tokens.refresh_token == refresh and store.rows["conn-1"]["refresh_token"] == refresh


def test_invalid_grant_asks_for_reauthorisation_and_names_the_connection(server):
    refresh = server.issue_refresh_token("app")
    server.revoke(refresh)
    store = FakeStore(_rt(server, refresh))
    with pytest.raises(ReauthorisationRequired) as caught:
        _client().token("conn-1", store.load("conn-1"), store)
    assert caught.value.connection_id == "conn-1"
    message = str(caught.value)
    assert "invalid_grant" in message and "conn-1 needs re-authorisation" in message
    assert refresh not in message and "s3cret-client" not in message
    assert store.saves == []


def test_a_rejected_token_is_refreshed_once_even_if_it_looks_fresh(server):
    store = FakeStore(_cc(server))
    client = _client()
    first = client.token("conn-1", store.load("conn-1"), store)
    second = client.token("conn-1", store.load("conn-1"), store, rejected=first.access_token)
    assert second.access_token != first.access_token and len(server.token_requests) == 2
    # A caller still holding the old credentials reports the old token: the stored new one
    # is used, with no further request.
    stale = {**_cc(server), **first.to_credentials()}
    assert client.token("conn-1", stale, store, rejected=first.access_token) == second
    assert len(server.token_requests) == 2


def test_a_slow_server_times_out_as_transient_and_frees_the_lock(server):
    server.delay = 1.5
    store = FakeStore(_cc(server))
    client = _client(timeout=0.5)
    with pytest.raises(ToolUnavailable, match="timed out"):
        client.token("conn-1", store.load("conn-1"), store)
    server.delay = 0.0
    assert client.token("conn-1", store.load("conn-1"), store).access_token  # the lock was released
    assert store.saves


def test_a_429_carries_retry_after_and_a_5xx_or_server_error_is_transient(server):
    client = _client()
    server.fail_next(429, {"error": "slow down"}, {"Retry-After": "7"})
    with pytest.raises(RateLimited) as caught:
        client.request_token(_cc(server))
    assert caught.value.retry_after == 7.0
    server.fail_next(502, {})
    with pytest.raises(ToolUnavailable):
        client.request_token(_cc(server))
    server.fail_next(400, {"error": "temporarily_unavailable"})
    with pytest.raises(ToolUnavailable):
        client.request_token(_cc(server))
    server.fail_next(200, {"token_type": "Bearer"})
    with pytest.raises(OAuth2Error, match="without an access_token"):
        client.request_token(_cc(server))
    server.fail_next(200, {"access_token": "x", "token_type": "mac"})
    with pytest.raises(OAuth2Error, match="only Bearer"):
        client.request_token(_cc(server))


def test_a_failed_save_is_not_swallowed(server):
    store = FakeStore(_cc(server))
    store.fail_save = True
    with pytest.raises(ToolUnavailable, match="store down"):
        _client().token("conn-1", store.load("conn-1"), store)


def test_a_deleted_connection_is_not_refreshed(server):
    with pytest.raises(NotFound):
        _client().token("gone", _cc(server), FakeStore())
    assert server.token_requests == []


def test_the_token_endpoint_obeys_the_address_rules(server):
    with pytest.raises(ToolError, match="not a public address"):
        OAuth2Client(allow_private=False).request_token(_cc(server))
    assert server.token_requests == []


def _race(clients: list[OAuth2Client], store: FakeStore) -> list[TokenSet]:
    """Each client asks for a token from its own thread, all at once."""
    stale = store.load("conn-1")
    barrier = threading.Barrier(len(clients))
    results: list[TokenSet] = []
    errors: list[BaseException] = []

    def one(client: OAuth2Client) -> None:
        barrier.wait()
        try:
            results.append(client.token("conn-1", stale, store))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


def test_two_concurrent_refreshes_in_one_process_make_one_request(server):
    server.rotate = True
    server.delay = 0.3  # both callers are inside token() while the first request is out
    store = FakeStore(_rt(server, server.issue_refresh_token("app")))
    client = _client()
    results = _race([client, client], store)
    assert len(server.token_requests) == 1
    assert results[0] == results[1] and len(store.saves) == 1


@pytest.mark.integration
def test_two_processes_sharing_only_redis_make_one_request(server, redis_url, redis_prefix):
    # Two clients with their own in-process locks and Redis connections, as two worker
    # processes would be: only the Redis lock stands between them and a double refresh,
    # which rotation would punish with invalid_grant.
    server.rotate = True
    server.delay = 0.3
    store = FakeStore(_rt(server, server.issue_refresh_token("app")))
    connections = [redis.Redis.from_url(redis_url) for _ in range(2)]
    try:
        clients = [_client(locks=RedisLocks(c, ttl=10, prefix=redis_prefix + "lock")) for c in connections]
        results = _race(clients, store)
        assert len(server.token_requests) == 1
        assert results[0] == results[1] and len(store.saves) == 1
        assert not connections[0].keys(redis_prefix + "lock*")  # released
    finally:
        for c in connections:
            c.close()


@pytest.mark.integration
def test_a_lock_held_too_long_is_a_transient_timeout(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    try:
        locks = RedisLocks(client, ttl=5, prefix=redis_prefix + "lock")
        other = RedisLocks(client, ttl=5, prefix=redis_prefix + "lock")
        with locks.hold("oauth2:c", 1.0), pytest.raises(LockTimeout):
            with other.hold("oauth2:c", 0.2):
                pass
        with other.hold("oauth2:c", 0.2):  # free again once released
            pass
    finally:
        client.close()
    local = LocalLocks()
    with local.hold("x", 1.0), pytest.raises(LockTimeout):
        with local.hold("x", 0.05):
            pass


def test_an_unreachable_lock_store_refuses_rather_than_refresh_unlocked():
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5,
                              retry=Retry(NoBackoff(), 0))
    with pytest.raises(ToolUnavailable, match="lock store unavailable"):
        with RedisLocks(unreachable, ttl=5).hold("oauth2:c", 0.5):
            pass
