"""``shiftflow prompts``: prompts, their versions, validations, runs and stats.

The same functions as the management API (``models.manage.prompts``), as the operator on
``--workspace``, writing the same audit entries. A prompt is created from a definition
file (YAML or JSON: ``name``, ``template``, ``variables``, ``config``, ``validations``,
``publish``; see ``examples/prompt_ops/``); a version is added from the same kind of file
(its ``template``, ``variables`` and ``config``). ``run`` publishes the run's trigger at
its priority and, with ``--wait``, waits for it and prints the run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from shiftflow.cli.operator import connect, guarded, json_object, operator, print_json
from shiftflow.models.manage.problems import InvalidInput


def _file(path: str) -> dict[str, Any]:
    from shiftflow.kernel.definition import parse_file
    from shiftflow.kernel.errors import DefinitionError

    try:
        return parse_file(path)
    except FileNotFoundError:
        raise InvalidInput("--file", f"{path}: no such file") from None
    except DefinitionError as exc:
        raise InvalidInput("--file", str(exc)) from None


def _create(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    row = prompts.create_from_definition(operator(args), _file(args.file))
    _show(prompts.prompt_dict(row, full=True), args.json)
    return 0


def _show(prompt: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(prompt)
        return
    print(f"{prompt['name']} ({prompt['id']}): {prompt['status']}, latest version {prompt['latest_version']}, "
          f"published {prompt['published_version'] or '-'}")
    for v in prompt.get("versions", []):
        model = (v["config"] or {}).get("model", "?")
        print(f"  v{v['version']:<3} {v['status']:<9} {model:<20} created {v['created_at']}"
              + (f", published {v['published_at']}" if v["published_at"] else ""))
    for c in prompt.get("validations", []):
        print(f"  validation {c['name']} ({c['type']}){'' if c['is_active'] else ', inactive'}")


def _list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    rows = prompts.list_prompts(operator(args), status=args.status)
    if args.json:
        print_json(rows)
        return 0
    for p in rows:
        print(f"{p['name']:<30} {p['status']:<9} latest v{p['latest_version']:<3} "
              f"published {p['published_version'] or '-':<4} {p['id']}")
    return 0


def _show_cmd(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    _show(prompts.get_prompt(operator(args), args.prompt), args.json)
    return 0


def _version_add(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    data = _file(args.file)
    row = prompts.add_version(operator(args), args.prompt, template=data.get("template"),
                              variables=data.get("variables"), config=data.get("config"),
                              change_log=args.change_log or data.get("change_log"))
    print(f"{args.prompt}: version {row.version} added (DRAFT); publish it with "
          f"shiftflow prompts publish {args.prompt} {row.version}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    row = prompts.publish(operator(args), args.prompt, args.version)
    print(f"{args.prompt}: version {row.version} published at {row.published_at:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _archive(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    prompts.archive(operator(args), args.prompt, args.version)
    print(f"{args.prompt}: {'version ' + str(args.version) if args.version else 'prompt'} archived")
    return 0


def _validation_add(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    row = prompts.add_validation(operator(args), args.prompt, name=args.name, type=args.type,
                                 config=json_object(args.config, "--config"))
    print(f"{args.prompt}: validation {row.name} ({row.type}) added, {row.id}")
    return 0


def _variables(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = json_object(args.variables, "--variables") if args.variables else {}
    for pair in args.var or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInput("--var", f"{pair!r}: expected name=value")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.kernel.contracts import Priority
    from shiftflow.kernel.enqueue import send
    from shiftflow.models.manage import control, prompts

    settings = connect(args)
    if settings.dev:
        raise InvalidInput("--workspace", "in dev mode the broker lives in the dev process: run prompts through "
                                          "its API (POST /api/v1/prompts/{id}/run)")
    actor = operator(args)
    payload = prompts.run_prompt(actor, args.prompt, variables=_variables(args), priority=args.priority,
                                 version=args.version)
    install(build_broker(settings, worker=False))
    send("triggers.start", payload, priority=int(Priority.parse(payload.priority)))
    control.record_trigger(actor, payload)
    execution_id = prompts.run_started(payload)
    print(f"{args.prompt}: run {execution_id} started (version {payload.data['version']}, {payload.priority})",
          flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        found = prompts.list_runs(actor, args.prompt, execution_id=execution_id)
        if found and found[0]["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            print_json(found[0])
            return 0 if found[0]["status"] == "SUCCEEDED" else 1
        time.sleep(0.2)
    print(f"{args.prompt}: run {execution_id} has not finished after {args.wait:g} s")
    return 1


def _runs(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    rows = prompts.list_runs(operator(args), args.prompt, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['created_at']} {r['execution_id']} v{r['version']} {r['status'] or '?':<9} "
              f"{r['validation_status']:<7} {r['attempts']} call(s) {r['tokens']['total']:>6} tokens "
              f"{r['latency_ms']:>6} ms {r['cost_usd'] or '-'} USD")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import prompts

    connect(args)
    rows = prompts.stats(operator(args), args.prompt)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'version':<8} {'runs':>5} {'calls':>6} {'failed':>6} {'valid':>6} {'invalid':>7} {'tokens':>8} "
          f"{'cost USD':>12} {'per run':>10} {'p50 ms':>7} {'p95 ms':>7}")
    for s in rows:
        latency = s["latency_ms"]
        print(f"v{s['version'] or '?':<7} {s['runs']:>5} {s['calls']:>6} {s['failed']:>6} {s['validation_passed']:>6} "
              f"{s['validation_failed']:>7} {s['tokens_in'] + s['tokens_out']:>8} {s['cost_usd']:>12} "
              f"{s['cost_per_run_usd'] or '-':>10} {latency['p50'] or 0:>7.0f} {latency['p95'] or 0:>7.0f}")
    return 0


def register(sub: Any) -> None:
    """Add ``prompts`` to the ``shiftflow`` parser."""
    top = sub.add_parser("prompts", help="prompts: versions, publishing, validations, runs and their costs",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = top.add_subparsers(dest="action", required=True, metavar="ACTION")

    def cmd(name: str, help_text: str, func: Any, *, prompt: bool = True, json_flag: bool = False) -> Any:
        p = s.add_parser(name, help=help_text, description=help_text)
        if prompt:
            p.add_argument("prompt", help="the prompt's name or id")
        p.add_argument("--workspace", required=True, help="workspace slug")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=guarded(func))
        return p

    p = cmd("create", "create a prompt from a definition file (version 1, a draft unless publish: true)", _create,
            prompt=False, json_flag=True)
    p.add_argument("--file", required=True, help="YAML or JSON: name, template, variables, config, validations")
    p = cmd("list", "list the workspace's prompts", _list, prompt=False, json_flag=True)
    p.add_argument("--status", choices=["DRAFT", "PUBLISHED", "ARCHIVED"], help="only this status")
    cmd("show", "one prompt with its versions and validations", _show_cmd, json_flag=True)
    version = s.add_parser("version", help="add a version of a prompt")
    v_sub = version.add_subparsers(dest="version_action", required=True, metavar="ACTION")
    p = v_sub.add_parser("add", help="add the next version (a draft) from a file's template, variables, config")
    p.add_argument("prompt", help="the prompt's name or id")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--file", required=True, help="YAML or JSON: template, variables, config")
    p.add_argument("--change-log", help="what changed")
    p.set_defaults(func=guarded(_version_add))
    p = cmd("publish", "publish a draft version (the one published before is archived)", _publish)
    p.add_argument("version", type=int, help="the version number")
    p = cmd("archive", "archive a version, or the whole prompt (it then no longer runs)", _archive)
    p.add_argument("--version", type=int, help="only this version")
    validation = s.add_parser("validation", help="add a validation to a prompt")
    va_sub = validation.add_subparsers(dest="validation_action", required=True, metavar="ACTION")
    p = va_sub.add_parser("add", help="hold the output to a JSON Schema, a regex or a registered function")
    p.add_argument("prompt", help="the prompt's name or id")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--name", required=True, help="the validation's name (shown in the reasons)")
    p.add_argument("--type", required=True, choices=["SCHEMA", "REGEX", "FUNCTION"])
    p.add_argument("--config", required=True, help='JSON: a schema, {"pattern": ...} or {"name": ..., "args": {}}')
    p.set_defaults(func=guarded(_validation_add))
    p = cmd("run", "run the published version with variables, at a priority", _run)
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="one variable (JSON or text; repeatable)")
    p.add_argument("--variables", help="a JSON object of variables")
    p.add_argument("--priority", default="NORMAL", choices=["LOW", "NORMAL", "HIGH", "CRITICAL"])
    p.add_argument("--version", type=int, help="a published version other than the current one")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for the run and print it")
    p = cmd("runs", "the prompt's runs, newest first: validation, tokens, latency, cost", _runs, json_flag=True)
    p.add_argument("--limit", type=int, default=20)
    cmd("stats", "per version: runs, validation outcomes, tokens, cost and latency (p50/p95)", _stats,
        json_flag=True)
