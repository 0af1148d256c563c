"""Prompt runs through ShiftFlow against the same calls from a bare Dramatiq actor.

One run, one machine, the same fake LLM provider (``shiftflow fakes llm``, a subprocess,
``--delay`` seconds per answer to stand for a model's answer time):

* **ShiftFlow**: ``--runs`` runs of a published prompt (typed variables, a sandboxed
  template, a JSON Schema answer and a SCHEMA validation), each a ``triggers.start``
  message at priority NORMAL, run by ``shiftflow workers --queues triggers steps llm`` (one
  process, ``--threads`` threads) on PostgreSQL, RabbitMQ and Redis: the execution, the
  budget check and reservation, the ``llm_call`` row before and after the call, the
  validation, the step and execution records.
* **baseline**: as many messages to a bare Dramatiq actor (``bench/llm_baseline_actor.py``,
  one process, the same threads) that POSTs the same body, decodes, validates and prices
  the answer and pushes the result to Redis.

Both sides publish their messages in a loop and are timed from the first publish to the
last result. Prints calls/s of both and the ratio ShiftFlow/baseline (target: at least
0.8), then checks every ShiftFlow run's record: 1,000 SUCCEEDED executions, 1,000 calls
with tokens, a cost and validation PASSED (and as many baseline results, all valid).

Usage: ``.venv/bin/python bench/bench_llm.py [--runs 1000] [--threads 8] [--delay 0.25]``
(``--delay 0`` measures the overhead alone against an instant model).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_services import Resources, Workers  # noqa: E402
from tests.support.secantus import _die_with_parent  # noqa: E402

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
KEY = "sk-bench-llm-0123456789"
SCHEMA = {"type": "object", "required": ["category", "urgency", "reply"],
          "properties": {"category": {"enum": ["billing", "bug", "question"]},
                         "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
                         "reply": {"type": "string", "maxLength": 200}}}
PROMPT = {
    "name": "bench-triage",
    "template": "Triage this support ticket and answer in json.\nCustomer: {{ customer }}\nTicket:\n{{ ticket }}\n",
    "variables": [{"name": "ticket", "type": "string", "required": True},
                  {"name": "customer", "type": "string", "default": "a customer"}],
    "config": {"connection": "openai-main", "model": "gpt-4o-mini", "system": "Reply with JSON only.",
               "max_tokens": 300, "response_format": {"json_schema": SCHEMA}},
    "validations": [{"name": "shape", "type": "SCHEMA", "config": SCHEMA}],
    "publish": True,
}


def _fake(port_delay: float) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([SHIFTFLOW, "fakes", "llm", "--port", str(port), "--api-key", KEY, "--delay",
                             str(port_delay)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, f"http://127.0.0.1:{port}/v1"
        time.sleep(0.05)
    raise RuntimeError("the fake LLM provider did not start")


def _wait(count: Any, target: int, what: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"{what}: only {count()} of {target} finished in {timeout:g} s")


def run_shiftflow(res: Resources, stack: contextlib.ExitStack, llm_url: str, args: argparse.Namespace,
                  logs: Path) -> dict[str, Any]:
    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.kernel.contracts import Priority
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.enqueue import send
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.engine.connection_secrets import store_connection
    from shiftflow.models.manage import catalog, prompts
    from shiftflow.models.manage.access import Principal
    from shiftflow.models.tables.executions import Execution
    from shiftflow.models.tables.llm_calls import LlmCall

    mongo_url, _ = res.mongo()
    env = {**os.environ, "SHIFTFLOW_MODE": "production", "SHIFTFLOW_DATABASE_URL": res.pg_database("llm"),
           "SHIFTFLOW_AMQP_URL": res.vhost("llm"), "SHIFTFLOW_REDIS_URL": res.redis(),
           "SHIFTFLOW_MONGO_URL": mongo_url, "SHIFTFLOW_MONGO_DB": "bench_llm",
           "SHIFTFLOW_SECRET_KEYS": "bench-secret-key-of-at-least-32-characters",
           "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true", "SHIFTFLOW_METRICS_PORT": "0",
           # The connection's own rate limit is not what is measured here.
           "SHIFTFLOW_INTEGRATION_LIMITS": "openai=100000/s:100000",
           "SHIFTFLOW_QUOTA_MAX_QUEUED_EXECUTIONS": "10000000"}
    subprocess.run([SHIFTFLOW, "migrate"], env=env, check=True, capture_output=True)
    settings = configure(Settings.from_env(env))
    bind_database(settings.database_url)
    install(build_broker(settings, worker=False))
    workspace = catalog.ensure_workspace("bench")
    store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": llm_url})
    actor = Principal.operator(workspace.id)
    prompt = prompts.create_from_definition(actor, PROMPT)
    payloads = [prompts.run_prompt(actor, prompt.id, variables={"ticket": f"ticket {n}: I was charged twice"},
                                   priority="NORMAL", idempotency_key=f"bench-{n}") for n in range(args.runs)]
    workflow_id = payloads[0].workflow_id
    workers = Workers("shiftflow", [[SHIFTFLOW, "workers", "--queues", "triggers", "steps", "llm", "--processes",
                                     "1", "--threads", str(args.threads)]], env, logs)
    workers.start()
    stack.callback(workers.stop)
    time.sleep(3)  # the pool declares its queues and connects
    workers.check_alive()

    def done() -> int:
        return int(Execution.select().where((Execution.workflow == workflow_id)
                                            & Execution.status.in_(("SUCCEEDED", "FAILED"))).count())

    start = time.monotonic()
    for payload in payloads:
        send("triggers.start", payload, priority=int(Priority.parse(payload.priority)))
    end = _wait(done, args.runs, "ShiftFlow runs", args.timeout)
    seconds = end - start
    executions = Execution.select().where(Execution.workflow == workflow_id)
    calls = LlmCall.select().where(LlmCall.prompt == prompt.id)
    failed = [e.error for e in executions.where(Execution.status != "SUCCEEDED").limit(3)]
    assert not failed, f"ShiftFlow runs failed: {failed}"
    assert executions.count() == args.runs
    recorded = calls.where((LlmCall.status == "SUCCEEDED") & (LlmCall.validation_status == "PASSED")
                           & LlmCall.cost_usd.is_null(False) & LlmCall.token_usage.is_null(False)
                           & (LlmCall.latency_ms > 0))
    assert calls.count() == args.runs, f"{calls.count()} calls recorded for {args.runs} runs"
    assert recorded.count() == args.runs, f"{recorded.count()} complete call records of {args.runs}"
    total = sum((Decimal(c.cost_usd) for c in calls), Decimal(0))
    workers.stop()
    return {"seconds": seconds, "per_second": args.runs / seconds, "cost": total}


def run_baseline(res: Resources, stack: contextlib.ExitStack, llm_url: str, args: argparse.Namespace,
                 logs: Path) -> dict[str, Any]:
    import dramatiq
    import redis
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    amqp, redis_url = res.vhost("base"), res.redis()
    env = {**os.environ, "BENCH_AMQP_URL": amqp, "BENCH_REDIS_URL": redis_url, "BENCH_LLM_URL": llm_url,
           "BENCH_LLM_KEY": KEY, "PYTHONPATH": str(ROOT)}
    body = {"model": "gpt-4o-mini", "max_tokens": 300,
            "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}}}
    broker = RabbitmqBroker(url=amqp)
    broker.declare_queue("bench_llm")
    client = redis.Redis.from_url(redis_url)
    client.delete("bench:llm:baseline")
    messages = []
    for n in range(args.runs):
        text = f"Triage this support ticket and answer in json.\nCustomer: a customer\nTicket:\nticket {n}: " \
               "I was charged twice\n"
        request = {**body, "messages": [{"role": "system", "content": "Reply with JSON only."},
                                        {"role": "user", "content": text}]}
        messages.append(dramatiq.Message(queue_name="bench_llm", actor_name="call", args=(request, SCHEMA),
                                         kwargs={}, options={}))
    workers = Workers("baseline", [[str(Path(sys.executable).with_name("dramatiq")), "bench.llm_baseline_actor",
                                    "--processes", "1", "--threads", str(args.threads)]], env, logs)
    workers.start()
    stack.callback(workers.stop)
    time.sleep(3)
    workers.check_alive()
    start = time.monotonic()
    for message in messages:
        broker.enqueue(message)
    end = _wait(lambda: int(client.llen("bench:llm:baseline")), args.runs, "baseline calls", args.timeout)
    seconds = end - start
    results = [json.loads(r) for r in client.lrange("bench:llm:baseline", 0, -1)]
    assert len(results) == args.runs and all(r["valid"] and r["in"] > 0 and r["out"] > 0 for r in results)
    broker.close()
    workers.stop()
    return {"seconds": seconds, "per_second": args.runs / seconds,
            "cost": sum((Decimal(r["cost"]) for r in results), Decimal(0))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.25, help="the fake model's answer time, seconds")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: databases, vhosts and processes are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        res = Resources(stack)
        fake, llm_url = _fake(args.delay)
        stack.callback(lambda: (fake.terminate(), fake.wait(10)))
        logs = Path(tempfile.mkdtemp(prefix="sf-bench-llm-"))
        base = run_baseline(res, stack, llm_url, args, logs)
        flow = run_shiftflow(res, stack, llm_url, args, logs)
    load_after = os.getloadavg()
    ratio = flow["per_second"] / base["per_second"]
    print(f"bench_llm {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average "
          f"{load_before[0]:.2f} before / {load_after[0]:.2f} after; {args.runs} runs per side, "
          f"{args.threads} threads, fake answer time {args.delay:g} s")
    print(f"  baseline (bare Dramatiq actor): {base['per_second']:8.1f} calls/s ({base['seconds']:.1f} s), "
          f"cost {base['cost']} USD")
    print(f"  ShiftFlow (prompt runs):        {flow['per_second']:8.1f} calls/s ({flow['seconds']:.1f} s), "
          f"cost {flow['cost']} USD, every run recorded (tokens, cost, validation PASSED)")
    print(f"  ratio ShiftFlow/baseline: {ratio:.2f}x (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
