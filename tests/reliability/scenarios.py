"""One fault scenario's run: a tenant, the counting server, ShiftFlow's processes, the sender.

``ScenarioRun`` is a context manager used by ``test_faults.py``::

    with ScenarioRun(stack, "broker_kill") as run:
        run.steady(rate=15, seconds=40)      # signed webhooks in the background
        run.wait_until(8)                    # seconds since the run started
        run.fault_began()
        stack.rabbitmq.kill(); stack.rabbitmq.start()
        run.fault_ended()
        numbers = run.finish()               # drain, check, print, remember
    assert numbers.passed, numbers.report()

Every delivery goes through the workflow ``EFFECTS_WORKFLOW``: two ``effect: once`` HTTP
calls to the counting server with a transform between and after, so each accepted
delivery owes exactly two calls and one SUCCEEDED execution.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg2

from .checker import install_recorder
from .counting import CountingServer
from .fault_checker import DRAIN_LIMIT, Numbers, check, operator_unknowns, read_snapshot, unsettled
from .processes import ShiftFlowProcess, http_ready, workers_ready
from .sender import Delivery, Ledger, WebhookSender, delivery_id
from .stack import Stack, Tenant

#: Every scenario's row, in the order run (printed at the end of the session).
RESULTS: list[Numbers] = []
#: Seconds after the fault's end (or the last send) a sender keeps retrying a delivery.
GIVE_UP_AFTER = 60.0
#: The longest a steady stream runs.
MAX_SEND_SECONDS = 100.0


def effects_workflow(url: str) -> dict[str, Any]:
    """A webhook workflow of two ``effect: once`` calls to ``url``, each naming its step."""

    def call(step: str) -> dict[str, Any]:
        return {
            "id": step,
            "type": "http",
            "effect": "once",
            "with": {
                "method": "POST",
                "url": "{{ vars.url }}",
                "json": {"execution": "{{ execution.id }}", "step": step},
            },
        }

    return {
        "name": "faults",
        "trigger": {"type": "webhook"},
        "vars": {"url": url},
        "steps": [
            call("call"),
            {"id": "shape", "type": "transform", "with": {"output": {"step": "{{ steps.call.output.json.echo.step }}"}}},
            call("confirm"),
            {"id": "done", "type": "transform", "with": {"output": {"ok": "{{ steps.confirm.output.json.ok }}"}}},
        ],
    }


class ScenarioRun:
    """One scenario on its own tenant of ``stack``.

    Parameters:
        stack: the suite's servers.
        name: the scenario's name (its row in the table).
        call_delay: seconds the counting server takes per call.
        processes, threads: the worker pool's size.
        env: extra environment for the ShiftFlow processes.
    """

    def __init__(
        self,
        stack: Stack,
        name: str,
        *,
        call_delay: float = 0.1,
        processes: int = 2,
        threads: int = 8,
        env: dict[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.name = name
        self.call_delay = call_delay
        self.processes = processes
        self.threads = threads
        self.extra_env = dict(env or {})
        self.ledger = Ledger()
        self.started = 0.0
        self.fault_start: float | None = None
        self.fault_end: float | None = None
        self._streams: list[threading.Thread] = []
        #: When ShiftFlow processes were killed by the scenario (epoch seconds).
        self.kills: list[float] = []
        self.tenant: Tenant
        self.server: CountingServer
        self.ingress: ShiftFlowProcess
        self.workers: ShiftFlowProcess
        self.sender: WebhookSender

    # -- set up -----------------------------------------------------------------------
    def __enter__(self) -> ScenarioRun:
        try:
            self._set_up()
        except BaseException:
            self._tear_down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._tear_down()

    def _set_up(self) -> None:
        self.stack.heal()
        self.tenant = self.stack.tenant(self.name)
        self.tenant.env.update(self.extra_env)
        install_recorder(self.tenant.pg_url)
        self.server = CountingServer(self.call_delay)
        token, secret = self.tenant.apply(effects_workflow(self.server.url))
        logs = self.tenant.dir / "logs"
        logs.mkdir()
        port = self.tenant.env["SHIFTFLOW_INGRESS_PORT"]
        self.ingress = ShiftFlowProcess(
            "ingress", ["ingress"], self.tenant.env, logs, http_ready(f"http://127.0.0.1:{port}/healthz")
        )
        self.workers = ShiftFlowProcess(
            "workers",
            ["workers", "--queues", "triggers", "steps", "tools", "--processes", str(self.processes),
             "--threads", str(self.threads)],
            self.tenant.env,
            logs,
            workers_ready(self.processes),
        )
        for proc in (self.ingress, self.workers):
            proc.start()
        for proc in (self.ingress, self.workers):
            proc.wait_ready(90)
            proc.supervise()
        self.sender = WebhookSender(
            f"http://127.0.0.1:{port}/hooks/{token}", secret, self.ledger, give_up_at=time.monotonic() + 600
        )
        self.started = time.monotonic()

    def _tear_down(self) -> None:
        # Whatever _set_up got to: a failed start must not leave processes behind.
        try:
            if hasattr(self, "sender"):
                self.sender.close()
        finally:
            for name in ("workers", "ingress"):
                proc = getattr(self, name, None)
                if proc is not None:
                    proc.stop()
            if hasattr(self, "server"):
                self.server.close()

    # -- traffic ----------------------------------------------------------------------
    def steady(self, rate: float, seconds: float | None = None, prefix: str = "msg", tail: float = 10.0) -> None:
        """Send ``rate`` fresh deliveries per second in the background: for ``seconds``, or
        (None) until ``tail`` seconds after the fault's end (``MAX_SEND_SECONDS`` at most)."""
        started = time.monotonic()

        def more() -> bool:
            now = time.monotonic()
            if seconds is not None:
                return now - started < seconds
            return now - started < MAX_SEND_SECONDS and (self.fault_end is None or now < self.fault_end + tail)

        def bodies() -> Iterator[Delivery]:
            n = 0
            while more():
                yield Delivery(delivery_id(prefix), json.dumps({"n": n, "kind": "steady"}).encode())
                n += 1

        self.stream(bodies(), rate)

    def stream(self, deliveries: Iterator[Delivery] | list[Delivery], rate: float) -> None:
        """Send ``deliveries`` at ``rate`` per second, in the background."""
        thread = threading.Thread(target=self.sender.stream, args=(iter(deliveries), rate), daemon=True)
        thread.start()
        self._streams.append(thread)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def wait_until(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the run started."""
        pause = self.started + seconds - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def fault_began(self) -> None:
        """Mark the fault's start."""
        self.fault_start = time.monotonic()

    def fault_ended(self) -> None:
        """Mark the fault's end (the service is back): the drain clock starts here."""
        self.fault_end = time.monotonic()

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker process of the pool, remembering when."""
        self.kills.append(time.time())
        os.kill(pid, signal.SIGKILL)

    # -- observations -----------------------------------------------------------------
    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of the worker pool's Prometheus exporter (None if absent or unreachable)."""
        url = f"http://127.0.0.1:{self.tenant.env['SHIFTFLOW_METRICS_PORT']}/metrics"
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            return None
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + "{" if labels else name + " "):
                head, _, value = line.rpartition(" ")
                found = head[len(name):].strip("{}")
                if not labels or ",".join(sorted(found.split(","))) == want:
                    return float(value)
        return None

    def executions_without_logs(self) -> tuple[int, int]:
        """(executions of accepted deliveries, how many of them have no log document)."""
        import psycopg2
        import pymongo

        keys = [f"standard:{d}" for d in self.ledger.accepted()]
        with psycopg2.connect(self.tenant.pg_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT id::text FROM execution WHERE dedup_key = ANY(%s)", (keys,))
            ids = {r[0] for r in cur.fetchall()}
        conn.close()
        client: Any = pymongo.MongoClient(self.tenant.mongo_url, serverSelectionTimeoutMS=10_000)
        try:
            logged = set(client[self.tenant.mongo_db]["execution_logs"].distinct("executionId"))
        finally:
            client.close()
        return len(ids), len(ids - logged)

    # -- the end ----------------------------------------------------------------------
    def finish_streams(self) -> None:
        """Wait until every delivery streamed so far was submitted and settled (accepted,
        refused, or given up ``GIVE_UP_AFTER`` seconds after the fault's end)."""
        for thread in self._streams:
            thread.join(300)
        self._streams.clear()
        self.sender.give_up_at = max(self.fault_end or 0.0, time.monotonic()) + GIVE_UP_AFTER
        self.sender.join(GIVE_UP_AFTER + 60)

    def wait_settled(self, timeout: float = DRAIN_LIMIT) -> None:
        """Wait until every accepted delivery has a finished execution or a dead letter.

        Raises:
            AssertionError: not within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        accepted = self.ledger.accepted()
        while unsettled(self.tenant.pg_url, accepted):
            assert time.monotonic() < deadline, f"{self.name}: not settled within {timeout:g} s"
            time.sleep(0.5)

    def finish(self) -> Numbers:
        """Let the sender settle, wait for the drain, check, print and remember the row."""
        self.finish_streams()
        if self.fault_end is None:
            self.fault_end = time.monotonic()
        drain = self._drain()
        snapshot = read_snapshot(self.tenant.pg_url)
        listed, how = operator_unknowns(self.tenant.env)
        deaths = self.kills + self.workers.exit_times + self.ingress.exit_times
        numbers = check(self.name, self.ledger, snapshot, self.server.calls(), listed, deaths)
        numbers.drain_seconds = drain
        numbers.seconds = time.monotonic() - self.started
        numbers.notes.append(
            f"{numbers.succeeded} executions SUCCEEDED, {numbers.dead_lettered} dead letters, "
            f"{numbers.calls} calls; answers {dict(sorted(self.ledger.statuses().items()))}; "
            f"{snapshot.reclaimed} steps claimed more than once (at most {snapshot.max_attempts} times)"
        )
        if numbers.unknown_left:
            numbers.notes.append(f"unknown outcomes read with {how}; {numbers.parked} execution(s) wait for "
                                 "an operator to settle them (`shiftflow effects settle`)")
        numbers.notes.append(
            f"restarts: workers {self.workers.restarts} (exit codes {self.workers.exits}), ingress "
            f"{self.ingress.restarts}; logs: workers {self.workers.log_bytes() / 1e6:.1f} MB, "
            f"ingress {self.ingress.log_bytes() / 1e6:.1f} MB"
        )
        RESULTS.append(numbers)
        print("\n" + numbers.report())
        return numbers

    def _drain(self) -> float | None:
        """Seconds from the fault's end until nothing accepted is unsettled (None: not
        within ``DRAIN_LIMIT``)."""
        assert self.fault_end is not None
        accepted = self.ledger.accepted()
        deadline = self.fault_end + DRAIN_LIMIT
        while True:
            with contextlib.suppress(psycopg2.Error):  # PostgreSQL not back yet: not drained
                if unsettled(self.tenant.pg_url, accepted) == 0:
                    return round(max(0.0, time.monotonic() - self.fault_end), 1)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
