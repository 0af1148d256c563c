"""``shiftflow fakes``: local fakes of outside services, served until Ctrl-C.

shiftflow fakes llm [--port P] [--api-key K] [--delay S] [--alias MODEL=ANSWERED ...]
                                        # an LLM provider speaking OpenAI's and Anthropic's APIs
shiftflow fakes deploy [--port P] [--token T] [--queued-seconds S] [--building-seconds S]
                                        # a deploy service: queued -> building -> ready

Both serve until Ctrl-C or SIGTERM, then close every connection and exit 0.

(The fake SideShift and price API are ``shiftflow sideshift fakes``.)
"""

from __future__ import annotations

import argparse
from typing import Any

from shiftflow.cli.interrupt import wait_for_stop_signal
from shiftflow.cli.operator import usage_error


def _aliases(values: list[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for value in values:
        asked, sep, answered = value.partition("=")
        if not sep or not asked or not answered:
            return None
        out[asked] = answered
    return out


def _llm(args: argparse.Namespace) -> int:
    from shiftflow.fakes.llm import FakeLlm, FakeLlmServer

    aliases = _aliases(args.alias)
    if aliases is None:
        return usage_error("--alias", "expected MODEL=ANSWERED, e.g. gpt-4o=gpt-4o-2024-08-06")
    if args.delay < 0:
        return usage_error("--delay", "expected a number of seconds of at least 0")
    fake = FakeLlm(api_key=args.api_key, model_aliases=aliases, delay=args.delay)
    try:
        server = FakeLlmServer(fake, port=args.port)
    except OSError as exc:
        return usage_error("--port", f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
    with server:
        key = args.api_key or "any-key"
        print("fake LLM provider on 127.0.0.1 (OpenAI Chat Completions and Anthropic Messages). Connections:\n")
        print(f'  openai:    {{"api_key": "{key}", "base_url": "{server.openai_base_url}"}}')
        print(f'  anthropic: {{"api_key": "{key}", "base_url": "{server.anthropic_base_url}"}}\n')
        print("It echoes the last user message; a JSON schema gets a valid value; markers in a prompt: "
              "[[tool NAME {...}]], [[fail 429 retry-after=2 times=1]], [[fail 529]], [[slow 5]], [[drop]] "
              "(docs/llm.md).")
        print(f"requests: curl {server.url}/_fake/requests   counters: curl {server.url}/_fake/counters   "
              "Stop: Ctrl-C", flush=True)
        wait_for_stop_signal()
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from shiftflow.fakes.deploy import FakeDeploy, FakeDeployServer, SystemClock, Timings

    for flag, value in (("--queued-seconds", args.queued_seconds), ("--building-seconds", args.building_seconds)):
        if value < 0:
            return usage_error(flag, "expected a number of seconds of at least 0")
    fake = FakeDeploy(
        clock=SystemClock(), timings=Timings(args.queued_seconds, args.building_seconds), token=args.token
    )
    try:
        server = FakeDeployServer(fake, port=args.port)
    except OSError as exc:
        return usage_error("--port", f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}")
    with server:
        print(f"fake deploy service on 127.0.0.1: API root {server.base_url}"
              + (f" (Authorization: Bearer {args.token})" if args.token else "") + "\n")
        print(f"  curl -X POST {server.base_url}/deployments -H 'content-type: application/json' "
              "-d '{\"project\": \"web\", \"ref\": \"main\"}'")
        print(f"  curl {server.base_url}/deployments/dep_000001\n")
        print(f"Deployments are queued {args.queued_seconds:g} s, build {args.building_seconds:g} s, then are "
              'ready (metadata {"fake_outcome": "error"} or "canceled" ends them otherwise).')
        print(f"requests: curl {server.url}/_fake/requests   Stop: Ctrl-C", flush=True)
        wait_for_stop_signal()
    return 0


def register(sub: Any) -> None:
    """Add ``shiftflow fakes ...`` to the ``shiftflow`` parser."""
    group = sub.add_parser(
        "fakes",
        help="serve a local fake LLM provider or deploy service on 127.0.0.1 (tests, dev, demos)",
        description="Serve a local fake of an outside service until Ctrl-C. The fake SideShift and price "
        "API are `shiftflow sideshift fakes`.",
    )
    cmds = group.add_subparsers(dest="fakes_command", required=True, metavar="SERVICE")

    p = cmds.add_parser(
        "llm",
        help="a fake LLM provider speaking OpenAI's Chat Completions and Anthropic's Messages API",
        description="A fake LLM provider on 127.0.0.1: POST /v1/chat/completions (OpenAI-compatible) and "
        "POST /v1/messages (Anthropic). Answers are made from the prompt (an echo, a valid value for a JSON "
        "schema, tool calls asked for with [[tool NAME]]); usage counts words; markers in a prompt inject "
        "rate limits, overload, errors and slow answers (docs/llm.md).",
    )
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free port)")
    p.add_argument("--api-key", help="the only API key accepted (default: any non-empty key)")
    p.add_argument("--delay", type=float, default=0.0, help="seconds every answer waits (default 0)")
    p.add_argument(
        "--alias", action="append", default=[], metavar="MODEL=ANSWERED",
        help="report MODEL's answers as coming from ANSWERED (e.g. gpt-4o=gpt-4o-2024-08-06); repeatable",
    )
    p.set_defaults(func=_llm)

    p = cmds.add_parser(
        "deploy",
        help="a fake deploy service: create a deployment, poll it to ready/error/canceled, cancel it",
        description="A fake deploy service on 127.0.0.1 (docs/llm.md): POST /v1/deployments, "
        "GET /v1/deployments/{id}, POST /v1/deployments/{id}/cancel; deployments move queued -> building -> "
        "ready in real time.",
    )
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free port)")
    p.add_argument("--token", help="require Authorization: Bearer TOKEN (default: no authentication)")
    p.add_argument("--queued-seconds", type=float, default=1.0, help="seconds a deployment stays queued (default 1)")
    p.add_argument("--building-seconds", type=float, default=3.0, help="seconds a deployment builds (default 3)")
    p.set_defaults(func=_deploy)
