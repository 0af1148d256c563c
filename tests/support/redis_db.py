"""Redis for tests: a database number leased to one test at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.support.ownership import OWNER, token
from tests.support.waiting import wait_until

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Seconds a Redis database lease lasts: far above the per-test timeout, so leases of a
#: killed session free themselves soon.
REDIS_LEASE_TTL = 600


def check_redis() -> None:
    """Raise unless Redis answers PING."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    finally:
        client.close()


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@contextlib.contextmanager
def leased_redis_db(timeout: float = 30.0) -> Iterator[str]:
    """A Redis database number leased to the caller; yields its URL, flushed before and after.

    Leases are keys ``shiftflow-test:redis-db:<n>`` in database 0 (which tests never get),
    expiring after ``REDIS_LEASE_TTL`` seconds, so concurrent test sessions on one machine
    never share a database.
    """
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    owner = f"{OWNER} token={token()}"
    try:
        count = int(admin.config_get("databases").get("databases", 16))

        def lease() -> int | None:
            for n in range(1, count):
                if admin.set(f"shiftflow-test:redis-db:{n}", owner, nx=True, ex=REDIS_LEASE_TTL):
                    return n
            return None

        db = wait_until(lease, timeout=timeout, interval=0.2, message="a free Redis database (all leased)")
        leased = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)
        try:
            leased.flushdb()
            yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        finally:
            try:
                leased.flushdb()
            finally:
                leased.close()
                admin.eval(_RELEASE, 1, f"shiftflow-test:redis-db:{db}", owner)
    finally:
        admin.close()

