"""Reliability tests: faults injected into real processes, judged by a Jepsen-style checker.

The harness shared by the tests lives here:

* ``OutsideService``: a real HTTP server in the test process standing for the outside
  world; it records every call with the execution id, the step id and the time it was
  received, which the checker compares with the step's ``completed_at``.
* ``WorkerPool``: ``shiftflow workers`` as a subprocess in its own session, so the whole
  pool (its supervisor, worker processes and forks) can be SIGKILLed at once, and
  restarted the way systemd ``Restart=always`` would. A worker process that dies alone is
  replaced by the pool's supervisor (``deaths`` lists their exit codes).
* ``Publisher``: confirmed publishes of ``triggers.start`` from the test process; a key is
  *accepted* only once RabbitMQ confirmed it.

``checker.py`` judges the outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .checker import OutsideCall

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


class OutsideService:
    """A local HTTP service that records every call it receives.

    The workflow's HTTP steps POST ``{"execution": ..., "step": ...}``; the service answers
    ``{"ok": true, "echo": <body>}`` after ``delay`` seconds (a delay widens the window in
    which a kill lands between the call and the commit), or after ``step_delays[step]``.
    ``failures[step]`` calls of a step are answered 503 first (a transient failure).
    """

    def __init__(
        self,
        delay: float = 0.0,
        step_delays: dict[str, float] | None = None,
        failures: dict[str, int] | None = None,
    ) -> None:
        self.delay = delay
        self.step_delays = dict(step_delays or {})
        self.failures = dict(failures or {})
        self.calls: list[OutsideCall] = []
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                if len(raw) < length:  # the caller was killed mid-request: no call happened
                    self.close_connection = True
                    return
                body = json.loads(raw)
                step = str(body.get("step"))
                with service._lock:
                    service.calls.append(OutsideCall(str(body.get("execution")), step, at))
                    failing = service.failures.get(step, 0) > 0
                    if failing:
                        service.failures[step] -= 1
                pause = service.step_delays.get(step, service.delay)
                if pause:
                    time.sleep(pause)
                out = json.dumps({"ok": not failing, "echo": body}).encode()
                self.send_response(503 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/effect"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> OutsideService:
        """Serve in a background thread; returns ``self``."""
        self._thread.start()
        return self

    def recorded(self) -> list[OutsideCall]:
        """A copy of the calls received so far."""
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


class WorkerPool:
    """``shiftflow workers`` in its own process group, killable and restartable.

    The pool's supervisor replaces a worker process that died (``deaths``) and keeps
    running; ``supervised`` restarts the whole pool should the supervisor itself exit.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        queues: Sequence[str] = ("triggers", "steps", "tools"),
        processes: int = 2,
        threads: int = 4,
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.queues = tuple(queues)
        self.processes = processes
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.exits: list[int] = []
        #: Seconds from each start to every worker process being ready.
        self.boot_seconds: list[float] = []
        self._log: Path | None = None
        self._started_at = 0.0

    def start(self) -> None:
        """Start the pool (a new log file per start)."""
        self.starts += 1
        self._started_at = time.monotonic()
        self._log = self.log_dir / f"workers-{self.starts:03d}.log"
        with self._log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    SHIFTFLOW,
                    "workers",
                    "--queues",
                    *self.queues,
                    "--processes",
                    str(self.processes),
                    "--threads",
                    str(self.threads),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def ready(self) -> bool:
        """True once every worker process of the current start said it is ready."""
        if self._log is None or not self._log.exists():
            return False
        return (
            self._log.read_text(errors="replace").count("Worker process is ready for action")
            >= self.processes
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the pool consumes.

        Raises:
            AssertionError: it exited or did not get ready in time (with its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                self.boot_seconds.append(round(time.monotonic() - self._started_at, 2))
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker pool not ready (exit {self.poll()}):\n{self.log_tail()}")

    def poll(self) -> int | None:
        """The pool's exit code, or None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the whole process group (master, workers, forks) and reap the master."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.kills += 1

    def reap_exit(self) -> int | None:
        """If the pool exited on its own, record its code, stop any straggler of its group
        and return the code; None while it runs."""
        code = self.poll()
        if code is None:
            return None
        assert self.proc is not None
        try:  # the master is gone; a worker still shutting down must not linger
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.exits.append(code)
        self.proc = None
        return code

    def stop(self) -> None:
        """SIGTERM the pool (graceful), SIGKILL it after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with_group(self.proc.pid, signal.SIGKILL)  # forks left behind by a killed master

    def deaths(self) -> list[int]:
        """Exit codes of the worker processes that died and were replaced by the pool's
        supervisor, then those of the pool itself (its own exits), in order."""
        codes = re.findall(r"worker process \d+ \(pid \d+\) exited with code (-?\d+)", self.logs())
        return [int(code) for code in codes] + self.exits

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the current start's log."""
        if self._log is None or not self._log.exists():
            return "(no log)"
        return self._log.read_text(errors="replace")[-chars:]

    def logs(self) -> str:
        """Every start's log, concatenated."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("workers-*.log")))

    @contextmanager
    def supervised(self, interval: float = 0.1) -> Iterator[None]:
        """Restart the pool whenever it exits on its own (a crash), until the block ends."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(interval):
                if self.reap_exit() is not None:
                    self.start()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)


def with_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; no error if it is gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class Publisher:
    """Confirmed ``triggers.start`` publishes from the test process.

    ``accepted`` holds exactly the keys whose publish RabbitMQ confirmed.
    """

    def __init__(self, env: dict[str, str]) -> None:
        import dramatiq

        from shiftflow.kernel.broker import build_broker
        from shiftflow.kernel.settings import Settings

        self.broker = build_broker(Settings.from_env(env), worker=False)
        self._previous = dramatiq.broker.global_broker
        dramatiq.set_broker(self.broker)
        self.accepted: list[str] = []
        self.refused = 0

    def trigger(self, workflow_id: str, key: str, data: dict[str, Any]) -> bool:
        """Publish one trigger; True (and ``key`` accepted) once the broker confirmed it."""
        from shiftflow.kernel.contracts import TriggerPayload
        from shiftflow.kernel.enqueue import send
        from shiftflow.kernel.errors import BrokerUnavailable

        try:
            send("triggers.start", TriggerPayload(workflow_id, key, "test", data))
        except BrokerUnavailable:
            self.refused += 1
            return False
        self.accepted.append(key)
        return True

    def close(self) -> None:
        """Close the broker and put back the process's previous global broker."""
        import dramatiq

        self.broker.close()
        dramatiq.broker.global_broker = self._previous


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


def two_call_definition(name: str, url: str) -> dict[str, Any]:
    """condition → http → transform → http → transform; both calls name their step."""
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
            http_step("call", "{{ trigger.n }}"),
            {
                "id": "shape",
                "type": "transform",
                "with": {"output": {"n": "{{ steps.call.output.json.echo.n }}"}},
            },
            http_step("confirm", "{{ steps.shape.output.n }}"),
            {
                "id": "done",
                "type": "transform",
                "with": {"output": {"n": "{{ steps.confirm.output.json.echo.n }}"}},
            },
        ],
    }


def http_step(step_id: str, n: str, **extra: Any) -> dict[str, Any]:
    """An HTTP step that POSTs to ``{{ vars.url }}`` naming its execution and step."""
    return {
        "id": step_id,
        "type": "http",
        **extra,
        "with": {
            "method": "POST",
            "url": "{{ vars.url }}",
            "json": {"execution": "{{ execution.id }}", "step": step_id, "n": n},
        },
    }


def wait_terminal(pg_url: str, keys: Sequence[str], pool: WorkerPool, stall: float = 30.0) -> dict[str, str]:
    """Wait until every key's execution is terminal; return the statuses.

    A loaded machine makes progress slow, not absent: this fails only when no further
    execution finished for ``stall`` seconds (the test's own timeout bounds the total).

    Raises:
        AssertionError: no progress for ``stall`` seconds (with the pool's log).
    """
    terminal = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
    done, last_progress = -1, time.monotonic()
    while True:
        found = statuses(pg_url, keys)
        finished = sum(1 for s in found.values() if s in terminal)
        if finished == len(keys):
            return found
        if finished > done:
            done, last_progress = finished, time.monotonic()
        elif time.monotonic() - last_progress > stall:
            open_ = sorted(k for k in keys if found.get(k) not in terminal)
            raise AssertionError(
                f"{len(open_)} of {len(keys)} executions not terminal, none finished for "
                f"{stall:g}s (e.g. {open_[:5]}: {[found.get(k) for k in open_[:5]]})\n"
                f"{pool.log_tail()}"
            )
        time.sleep(0.25)


def create_workflow(pg_url: str, definition: dict[str, Any], workspace: str = "rel") -> str:
    """Store ``definition`` in the database at ``pg_url``; return the workflow id."""
    from shiftflow.kernel.db import bind_database
    from shiftflow.models.manage import catalog

    db = bind_database(pg_url)
    try:
        with db.connection_context():
            return str(catalog.apply_definition(catalog.ensure_workspace(workspace), definition).workflow.id)
    finally:
        close_all = getattr(db, "close_all", None)  # the pooled database keeps idle connections
        if close_all is not None:
            close_all()
        db.close()


def statuses(pg_url: str, keys: Sequence[str]) -> dict[str, str]:
    """The execution status of each key that has an execution."""
    import psycopg2

    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT dedup_key, status FROM execution WHERE dedup_key = ANY(%s)", (list(keys),))
            return dict(cur.fetchall())
    finally:
        conn.close()


def run_beside_poison(
    rig: Rig, pool: WorkerPool, steady: str, poison: str, poison_key: str, quarantined: Callable[[], Any]
) -> tuple[list[str], Any]:
    """Publish 40 triggers of ``steady`` before, during and after one ``poison`` trigger
    (``poison_key``), with ``pool`` supervised, until ``quarantined()`` returns something
    true; then wait for every steady execution and check that the pool stays up.

    Returns:
        The steady dedup keys and what ``quarantined()`` returned.
    """
    from tests.helpers import wait_until

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
        time.sleep(3)
        assert pool.poll() is None, f"the pool died after the quarantine:\n{pool.log_tail()}"
        assert pool.deaths() == settled
    return keys, found
