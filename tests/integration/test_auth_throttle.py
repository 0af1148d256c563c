"""Failed API authentication is throttled per client address and per key prefix.

Over real HTTP (uvicorn) on real PostgreSQL and Redis: the counts live in Redis, so a
second ingress process sharing it refuses the same address; without Redis each process
counts for itself.
"""

from __future__ import annotations

import httpx
import pytest

from shiftflow.kernel.settings import Settings
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base + "/api/v1", timeout=15)


def _bad(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_failed_authentication_is_throttled_per_client_address(real_env):
    env = {**real_env, "SHIFTFLOW_AUTH_FAILURES_PER_ADDRESS": "5", "SHIFTFLOW_AUTH_FAILURE_WINDOW_SECONDS": "60"}
    with worker(env) as settings:
        a = seed_tenant("alpha", roles=("OWNER",))
        with serve(create_app(settings)) as base, serve(create_app(settings)) as other_base:
            with _client(base) as c, _client(other_base) as other:
                assert c.get("/workspace", headers=a.auth()).status_code == 200
                for i in range(5):
                    forged = f"sfk_{i:012x}_{'A' * 43}"  # a different key each time: a scan
                    assert c.get("/workspace", headers=_bad(forged)).status_code == 401
                throttled = c.get("/workspace", headers=_bad("sfk_nope"))
                assert throttled.status_code == 429, throttled.text
                assert 0 < int(throttled.headers["Retry-After"]) <= 60
                assert "authentication" in throttled.json()["error"]
                # The address is refused before its key is even looked at, a good one too.
                assert c.get("/workspace", headers=a.auth()).status_code == 429
                # The count is in Redis: another ingress process refuses the address as well.
                assert other.get("/workspace", headers=a.auth()).status_code == 429


def test_failed_authentication_is_throttled_per_key_prefix(real_env):
    # A window long enough that a slow machine cannot let it lapse between the guesses.
    env = {
        **real_env,
        "SHIFTFLOW_AUTH_FAILURES_PER_ADDRESS": "1000",
        "SHIFTFLOW_AUTH_FAILURES_PER_KEY": "3",
        "SHIFTFLOW_AUTH_FAILURE_WINDOW_SECONDS": "120",
    }
    with worker(env) as settings:
        a = seed_tenant("alpha", roles=("OWNER", "VIEWER"))
        prefix = a.keys["OWNER"][: len("sfk_") + 12]  # the secret may hold "_" too
        with serve(create_app(settings)) as base, _client(base) as c:
            for guess in ("B", "C", "D"):
                assert c.get("/workspace", headers=_bad(f"{prefix}_{guess * 43}")).status_code == 401
            throttled = c.get("/workspace", headers=_bad(f"{prefix}_{'E' * 43}"))
            assert throttled.status_code == 429, throttled.text
            assert 1 <= int(throttled.headers["Retry-After"]) <= 120
            # Guessing one key's secret stops, the right secret too; other keys from the
            # same address still work.
            assert c.get("/workspace", headers=a.auth()).status_code == 429
            assert c.get("/workspace", headers=a.auth("VIEWER")).status_code == 200


def test_a_throttled_key_works_again_once_the_window_has_passed(real_env):
    env = {
        **real_env,
        "SHIFTFLOW_AUTH_FAILURES_PER_ADDRESS": "1000",
        "SHIFTFLOW_AUTH_FAILURES_PER_KEY": "3",
        "SHIFTFLOW_AUTH_FAILURE_WINDOW_SECONDS": "8",
    }
    with worker(env) as settings:
        a = seed_tenant("alpha", roles=("OWNER",))
        prefix = a.keys["OWNER"][: len("sfk_") + 12]  # the secret may hold "_" too
        with serve(create_app(settings)) as base, _client(base) as c:
            # Five loopback requests within the 8 s window that began at the first failure:
            # the key is throttled first, so the wait below starts from a refusal.
            guesses = [c.get("/workspace", headers=_bad(f"{prefix}_{g * 43}")).status_code for g in "BCDE"]
            assert guesses == [401, 401, 401, 429]
            assert c.get("/workspace", headers=a.auth()).status_code == 429
            # However slowly the guesses went, the window ends within 8 s of the first one.
            wait_until(lambda: c.get("/workspace", headers=a.auth()).status_code == 200, timeout=20)


def test_without_redis_each_process_throttles_on_its_own(real_env):
    env = {**real_env, "SHIFTFLOW_AUTH_FAILURES_PER_ADDRESS": "2"}
    with worker(env):  # binds the database; the app below runs without Redis
        local = Settings.from_env({k: v for k, v in env.items() if k != "SHIFTFLOW_REDIS_URL"})
        assert local.redis_url == ""
        a = seed_tenant("alpha", roles=("OWNER",))
        with serve(create_app(local)) as base, serve(create_app(local)) as other_base:
            with _client(base) as c, _client(other_base) as other:
                for _ in range(2):
                    assert c.get("/workspace", headers=_bad("sfk_x")).status_code == 401
                assert c.get("/workspace", headers=_bad("sfk_x")).status_code == 429
                assert other.get("/workspace", headers=a.auth()).status_code == 200
