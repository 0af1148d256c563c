"""One test's harness (``Rig``), and the poison scenario the quarantine tests share."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until

from .outside_service import OutsideService
from .trigger_publisher import Publisher
from .waiting import wait_terminal
from .worker_pool import WorkerPool
from .workflows import create_workflow


class Rig:
    """One test's harness: the recorder installed, an outside service, a publisher, pools.

    Use as a context manager; leaving it stops every pool it made, the publisher and
    the service.
    """

    def __init__(
        self,
        real_env: dict[str, str],
        pg_url: str,
        log_dir: Path,
        *,
        delay: float = 0.02,
        step_delays: dict[str, float] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        from .checker import install_recorder

        install_recorder(pg_url)
        self.pg_url = pg_url
        self.env = {**os.environ, **real_env, "SHIFTFLOW_LOG_LEVEL": "WARNING", **(extra_env or {})}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.service = OutsideService(delay, step_delays).start()
        self.publisher = Publisher(self.env)
        self.pools: list[WorkerPool] = []

    def pool(self, env: dict[str, str] | None = None, **kwargs: Any) -> WorkerPool:
        """A new (not yet started) worker pool on this test's services."""
        made = WorkerPool(env or self.env, self.log_dir, **kwargs)
        self.pools.append(made)
        return made

    def workflow(self, definition: dict[str, Any]) -> str:
        """Store ``definition``; return the workflow id."""
        return create_workflow(self.pg_url, definition)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for made in self.pools:
                made.stop()
        finally:
            self.publisher.close()
            self.service.close()


def run_beside_poison(
    rig: Rig, pool: WorkerPool, steady: str, poison: str, poison_key: str, quarantined: Callable[[], Any]
) -> tuple[list[str], Any]:
    """Publish 40 triggers of ``steady`` before, during and after one ``poison`` trigger
    (``poison_key``), with ``pool`` supervised, until ``quarantined()`` returns something
    true; then wait for every steady execution and check that the pool stays up while it
    runs 5 more (a marker batch: work the pool took after the quarantine had settled).

    Returns:
        The steady dedup keys and what ``quarantined()`` returned.
    """

    keys: list[str] = []

    def publish(first: int, count: int, pause: float) -> None:
        for n in range(first, first + count):
            assert rig.publisher.trigger(steady, f"s-{n:03d}", {"n": n})
            keys.append(f"s-{n:03d}")
            time.sleep(pause)

    with pool.supervised():
        publish(0, 5, 0)
        assert rig.publisher.trigger(poison, poison_key, {"n": 1})
        sender = threading.Thread(target=publish, args=(5, 30, 0.2))
        sender.start()  # the steady workflow keeps arriving while the poison kills its process
        found = wait_until(quarantined, timeout=150, interval=0.2)
        sender.join(60)
        # After the quarantine new work still completes, and no process dies any more: the
        # death just before the quarantine may still be reported meanwhile, none after.
        publish(35, 5, 0)
        wait_terminal(rig.pg_url, keys, pool)
        wait_until(pool.ready, timeout=30)
        settled = pool.deaths()
        marker = len(keys)
        publish(40, 5, 0)
        wait_terminal(rig.pg_url, keys[marker:], pool)
        assert pool.poll() is None, f"the pool died after the quarantine:\n{pool.log_tail()}"
        assert pool.deaths() == settled
    return keys, found
