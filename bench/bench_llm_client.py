"""LLM client overhead: ``complete()`` against a bare httpx POST to the same fake provider.

One run, one machine. The fake provider (``shiftflow fakes llm``) runs as a subprocess, so
the CPU measured is the caller's alone. For each provider (OpenAI-compatible and
Anthropic) and each kind of call (plain text; structured output with a JSON Schema),
``--calls`` calls through our client and as many bare calls, in alternating blocks so
that load drifts hit both:

* **client**: ``ProviderClient.complete(LlmRequest)``: the request checked, the body
  built, one deadline, the answer read in pieces, errors mapped, the answer parsed into a
  ``Completion`` (and, for structured output, decoded and checked against the schema).
* **bare**: ``httpx.Client.post(url, json=body, headers=...).json()`` with the same body
  the client sends, on a client with the same keep-alive pool: what calling the API
  "by hand" costs, and the floor the client is compared with.

Prints calls/s and CPU ms per call of both, and the ratios client/bare (calls/s below 1
and CPU above 1 are the client's cost). The engine-level LLM workload (1,000
prompt runs through ShiftFlow against a bare Dramatiq actor) builds on this.

Usage: ``.venv/bin/python bench/bench_llm_client.py [--calls 2000] [--blocks 20]``
(about a minute on a loaded 2-core machine; ``--calls 300`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from shiftflow.kernel.llm import LlmRequest, Message, ResponseFormat, make_client  # noqa: E402
from shiftflow.kernel.llm.base import ToolNames  # noqa: E402
from shiftflow.kernel.tools.http import tls_context  # noqa: E402

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
KEY = "sk-bench-0123456789"
PROMPT = (
    "Summarise the following customer feedback in one sentence and rate its sentiment from one to five: "
    "the checkout page took a long time to load on my phone, but support answered quickly and fixed my order."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 5},
        "sentiment": {"type": "integer", "minimum": 1, "maximum": 5},
        "topics": {"type": "array", "items": {"enum": ["speed", "support", "price", "other"]}, "minItems": 1},
    },
    "required": ["summary", "sentiment", "topics"],
    "additionalProperties": False,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the fake provider exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("the fake provider did not start within 30 s")


def measure(call: Callable[[], Any], count: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds of ``count`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        call()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_case(provider: str, root: str, request: LlmRequest, calls: int, blocks: int) -> dict[str, float]:
    base = root + "/v1" if provider == "openai" else root
    client = make_client(provider, {"api_key": KEY, "base_url": base}, allow_private=True, timeout=30)
    body = client.build_body(request, ToolNames(request.tools))
    url, headers = client.url(), client.headers()
    bare = httpx.Client(verify=tls_context(), limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))

    def ours() -> None:
        out = client.complete(request)
        assert out.tokens_out > 0 and (request.response_format is None or out.json_error is None), out

    def by_hand() -> None:
        answer = bare.post(url, json=body, headers=headers, timeout=30)
        answer.raise_for_status()
        assert answer.json()

    for _ in range(20):  # warm both: connections, caches, imports
        ours()
        by_hand()
    totals = {"client_wall": 0.0, "client_cpu": 0.0, "bare_wall": 0.0, "bare_cpu": 0.0}
    per_block = max(1, calls // blocks)
    for block in range(blocks):
        order = (("client", ours), ("bare", by_hand)) if block % 2 == 0 else (("bare", by_hand), ("client", ours))
        for name, call in order:
            wall, cpu = measure(call, per_block)
            totals[f"{name}_wall"] += wall
            totals[f"{name}_cpu"] += cpu
    client.close()
    bare.close()
    done = per_block * blocks
    return {
        "calls": done,
        "client_per_s": done / totals["client_wall"],
        "bare_per_s": done / totals["bare_wall"],
        "client_cpu_ms": 1000 * totals["client_cpu"] / done,
        "bare_cpu_ms": 1000 * totals["bare_cpu"] / done,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per side and case (default 2000)")
    parser.add_argument("--blocks", type=int, default=20, help="alternating blocks per case (default 20)")
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [SHIFTFLOW, "fakes", "llm", "--port", str(port), "--api-key", KEY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: list[tuple[str, dict[str, float]]] = []
    try:
        wait_port(port, fake)
        root = f"http://127.0.0.1:{port}"
        text = LlmRequest(model="fake-echo", system="You are a concise analyst.", messages=(Message.user(PROMPT),),
                          max_tokens=200, temperature=0.0)
        structured = LlmRequest(model="fake-echo", system="Answer in JSON.", messages=(Message.user(PROMPT),),
                                max_tokens=200, response_format=ResponseFormat.json_schema(SCHEMA, name="feedback"))
        for provider in ("openai", "anthropic"):
            for kind, request in (("text", text), ("structured", structured)):
                results.append((f"{provider}/{kind}", run_case(provider, root, request, args.calls, args.blocks)))
    finally:
        fake.send_signal(signal.SIGINT)
        try:
            fake.wait(20)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait()
    print(f"LLM client vs bare httpx POST, same fake provider (subprocess), {results[0][1]['calls']:.0f} calls per side")
    print(f"{'case':<22}{'client/s':>10}{'bare/s':>10}{'ratio':>8}{'client CPU ms':>15}{'bare CPU ms':>13}{'CPU ratio':>11}")
    for name, r in results:
        print(
            f"{name:<22}{r['client_per_s']:>10.0f}{r['bare_per_s']:>10.0f}{r['client_per_s'] / r['bare_per_s']:>8.2f}"
            f"{r['client_cpu_ms']:>15.3f}{r['bare_cpu_ms']:>13.3f}{r['client_cpu_ms'] / r['bare_cpu_ms']:>11.2f}"
        )
    print(json.dumps({name: {k: round(v, 4) for k, v in r.items()} for name, r in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
