"""Rate limits per integration and per connection (kernel/integrations/ratelimit.py): in this
process with a fake clock, and on real Redis shared by two limiters standing for two
workers; cool-downs after an outside 429; the metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from shiftflow.kernel.errors import RateLimited
from shiftflow.kernel.integrations.base import Integration, InvalidCredentials, RateLimits, unverified
from shiftflow.kernel.integrations.catalogue import IntegrationCatalogue, builtin_integrations
from shiftflow.kernel.integrations.ratelimit import MIN_COOLDOWN_SECONDS, IntegrationLimiter
from shiftflow.kernel.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _settings(**env: str) -> Settings:
    return Settings.from_env({"SHIFTFLOW_MODE": "dev", **env})


def _shared() -> Integration:
    """An integration whose service counts all our connections together (by our address)."""
    return Integration(key="byip", name="By IP", description="d", category="test", auth_type="NONE",
                       credentials_schema={"type": "object"}, test=lambda c, x: unverified("n/a"),
                       limits=RateLimits(per_second=10, burst=10), shared_limits=RateLimits(per_second=1, burst=2),
                       cooldown_scope="integration")


def _catalogue() -> IntegrationCatalogue:
    return IntegrationCatalogue([*builtin_integrations(), _shared()])


def _metric(name: str, integration: str) -> float:
    return REGISTRY.get_sample_value(name, {"integration": integration}) or 0.0


def test_a_connection_gets_its_burst_then_waits_for_its_rate_and_others_are_not_affected():
    clock = Clock()
    limiter = IntegrationLimiter(_catalogue(), settings=_settings(), clock=clock)
    waits_before = _metric("shiftflow_rate_limit_waits_total", "slack")
    # slack: 1/s, burst 3 per webhook.
    assert [limiter.acquire("slack", "hook-a") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("slack", "hook-a")
    assert wait == pytest.approx(1.0, abs=0.01)
    assert limiter.acquire("slack", "hook-b") is None  # its own bucket
    clock.now += wait
    assert limiter.acquire("slack", "hook-a") is None
    assert _metric("shiftflow_rate_limit_waits_total", "slack") == waits_before + 1


def test_per_minute_limits_and_the_shared_integration_bucket():
    clock = Clock()
    limiter = IntegrationLimiter(_catalogue(), settings=_settings(), clock=clock)
    # coingecko: 30/min, burst 5: five at once, then one every 2 s.
    assert all(limiter.acquire("coingecko", "c1") is None for _ in range(5))
    assert limiter.acquire("coingecko", "c1") == pytest.approx(2.0, abs=0.01)
    # byip: 10/s per connection but 1/s (burst 2) for all connections together.
    assert limiter.acquire("byip", "a") is None and limiter.acquire("byip", "b") is None
    assert limiter.acquire("byip", "c") == pytest.approx(1.0, abs=0.01)


def test_limits_precedence_connection_then_deployment_then_catalogue_then_default():
    limiter = IntegrationLimiter(_catalogue(), settings=_settings(
        SHIFTFLOW_INTEGRATION_LIMITS="slack=5/s,coingecko=100/min:20",
        SHIFTFLOW_INTEGRATION_RATE_PER_SECOND="7", SHIFTFLOW_INTEGRATION_RATE_BURST="9"))
    assert limiter.limits("slack")[0] == RateLimits(per_second=5, burst=3)
    assert limiter.limits("coingecko")[0] == RateLimits(per_minute=100, burst=20)
    assert limiter.limits("coingecko", {"burst": 2})[0] == RateLimits(per_minute=100, burst=2)
    assert limiter.limits("http")[0] == RateLimits(per_second=7, burst=9)  # declares none
    assert limiter.limits("someones_crm")[0] == RateLimits(per_second=7, burst=9)  # not in the catalogue
    assert limiter.limits("byip")[1] == RateLimits(per_second=1, burst=2)
    unlimited = limiter.limits("slack", {"per_second": 0})[0]
    assert unlimited.unlimited and all(limiter.acquire("slack", "x", override={"per_second": 0}) is None
                                       for _ in range(50))
    with pytest.raises(InvalidCredentials, match=r"rate_limits: unknown field 'per_hour'"):
        limiter.limits("slack", {"per_hour": 3})
    with pytest.raises(InvalidCredentials, match=r"rate_limits.burst: 0 is less than the minimum of 1"):
        limiter.limits("slack", {"burst": 0})


def test_a_429_cools_the_connection_down_and_a_shorter_answer_does_not_shorten_it():
    clock = Clock()
    limiter = IntegrationLimiter(_catalogue(), settings=_settings(SHIFTFLOW_RATE_LIMIT_COOLDOWN_SECONDS="4"),
                                 clock=clock)
    before = _metric("shiftflow_rate_limit_cooldowns_total", "discord")
    assert limiter.cool_down("discord", "hook-a", RateLimited("429", retry_after=30)) == pytest.approx(30)
    assert limiter.acquire("discord", "hook-a") == pytest.approx(30)
    assert limiter.acquire("discord", "hook-b") is None  # per connection
    assert limiter.cool_down("discord", "hook-a", 5) == pytest.approx(30)
    clock.now += 30
    assert limiter.acquire("discord", "hook-a") is None
    # No Retry-After: the deployment's cool-down; Retry-After 0: still at least a second.
    assert limiter.cool_down("discord", "hook-c", RateLimited("429")) == pytest.approx(4)
    assert limiter.cool_down("discord", "hook-d", 0) == pytest.approx(MIN_COOLDOWN_SECONDS)
    assert _metric("shiftflow_rate_limit_cooldowns_total", "discord") == before + 4


def test_a_cool_down_is_capped_and_may_apply_to_the_whole_integration():
    clock = Clock()
    limiter = IntegrationLimiter(_catalogue(), settings=_settings(SHIFTFLOW_RATE_LIMIT_MAX_COOLDOWN_SECONDS="60"),
                                 clock=clock)
    assert limiter.cool_down("slack", "a", RateLimited("429", retry_after=86_400)) == pytest.approx(60)
    # byip counts by our address: one 429 stops every connection.
    limiter.cool_down("byip", "a", 12)
    assert limiter.acquire("byip", "zzz") == pytest.approx(12)
    # A caller may widen the scope itself.
    limiter.cool_down("smtp", "a", 3, scope="integration")
    assert limiter.acquire("smtp", "b") == pytest.approx(3)


@pytest.fixture
def clients(redis_url) -> Iterator[list[redis.Redis]]:
    made = [redis.Redis.from_url(redis_url, socket_timeout=5) for _ in range(2)]
    yield made
    for client in made:
        client.close()


@pytest.mark.integration
def test_two_workers_share_buckets_and_cool_downs_through_redis(clients, redis_prefix):
    one, two = (IntegrationLimiter(_catalogue(), settings=_settings(), redis_client=c, prefix=redis_prefix + "rl")
                for c in clients)
    # slack's burst of 3 is shared: the second worker finds it spent.
    assert [one.acquire("slack", "hook"), one.acquire("slack", "hook"), two.acquire("slack", "hook")] == [None] * 3
    wait = two.acquire("slack", "hook")
    assert wait is not None and 0.5 < wait <= 1.0
    # A 429 met by one worker parks the other too, for as long as the service asked.
    assert two.acquire("discord", "hook") is None
    one.cool_down("discord", "hook", RateLimited("429", retry_after=20))
    cooling = two.acquire("discord", "hook")
    assert cooling is not None and 19 < cooling <= 20
    assert one.cool_down("discord", "hook", 2) == pytest.approx(cooling, abs=0.5)  # kept the longer one
    ttl = clients[0].pttl(f"{redis_prefix}rl:cooldown:discord:hook")
    assert 19_000 < ttl <= 20_000  # a key with a TTL: it ends by itself


@pytest.mark.integration
def test_the_shared_integration_bucket_holds_across_workers(clients, redis_prefix):
    one, two = (IntegrationLimiter(_catalogue(), settings=_settings(), redis_client=c, prefix=redis_prefix + "rl")
                for c in clients)
    assert one.acquire("byip", "a") is None and two.acquire("byip", "b") is None
    wait = one.acquire("byip", "c")
    assert wait is not None and 0.5 < wait <= 1.0


def test_without_redis_reachable_limits_and_cool_downs_fall_back_to_this_process():
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2,
                              retry=Retry(NoBackoff(), 0))
    clock = Clock()
    limiter = IntegrationLimiter(_catalogue(), settings=_settings(), redis_client=unreachable, clock=clock)
    fallbacks = REGISTRY.get_sample_value("shiftflow_quota_fallbacks_total") or 0.0
    assert [limiter.acquire("slack", "hook") for _ in range(3)] == [None] * 3
    assert limiter.acquire("slack", "hook") == pytest.approx(1.0, abs=0.01)
    assert limiter.cool_down("slack", "hook", 9) == pytest.approx(9)
    assert limiter.acquire("slack", "hook") == pytest.approx(9)
    assert (REGISTRY.get_sample_value("shiftflow_quota_fallbacks_total") or 0.0) > fallbacks


def test_deployment_limits_are_read_and_a_malformed_item_names_the_variable():
    from shiftflow.kernel.errors import SettingsError

    settings = _settings(SHIFTFLOW_INTEGRATION_LIMITS="slack=1/s:3, coingecko=30/min,coingecko=2/s")
    assert settings.integration_limits == (("slack", 1.0, None, 3), ("coingecko", 2.0, 30.0, None))
    for bad in ("slack=fast", "Slack=1/s", "slack=1/h", "slack=1/s:0"):
        with pytest.raises(SettingsError, match="SHIFTFLOW_INTEGRATION_LIMITS item"):
            _settings(SHIFTFLOW_INTEGRATION_LIMITS=bad)
    assert _settings().oauth2_lock_seconds == 30.0 and _settings().rate_limit_cooldown_seconds == 10.0


@pytest.mark.integration
def test_the_process_limiter_uses_the_process_settings_and_redis(redis_url, monkeypatch):
    from shiftflow.kernel import redis_handle
    from shiftflow.kernel import settings as settings_module
    from shiftflow.kernel.integrations import ratelimit

    monkeypatch.setattr(settings_module, "_current", _settings(SHIFTFLOW_INTEGRATION_LIMITS="smtp=1/s:1"))
    redis_handle.configure_redis(redis_url)
    try:
        connection = f"conn-{id(monkeypatch)}"
        assert ratelimit.acquire("smtp", connection) is None
        assert ratelimit.acquire("smtp", connection) == pytest.approx(1.0, abs=0.05)
        assert ratelimit.cool_down("smtp", connection, 5) == pytest.approx(5)
        with redis.Redis.from_url(redis_url) as client:
            assert client.pttl(f"shiftflow:ratelimit:cooldown:smtp:{connection}") > 4000
    finally:
        redis_handle.configure_redis("")
