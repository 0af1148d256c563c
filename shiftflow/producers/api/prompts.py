"""The management API's prompt paths: ``/prompts`` and below (versions, publish, archive,
validations, run, runs, stats).

Their part of the OpenAPI document and their handlers, kept apart from ``api.spec`` and
``api.handlers``, which merge them in. Each handler calls ``models.manage.prompts`` (the
CLI's ``shiftflow prompts`` calls the same functions). ``POST /prompts/{id}/run`` answers
202 once RabbitMQ confirmed the trigger, published at the run's priority.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftflow.kernel.contracts import Priority
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.models.manage import control, prompts
from shiftflow.producers.api.schemas import (
    ID,
    NULL_ID,
    NULL_TEXT,
    NULL_TIME,
    PRIORITY,
    STRINGS,
    TIME,
    closed,
    obj,
    ref,
)

_NULL_INT = {"type": ["integer", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_MONEY = {"type": ["string", "null"], "description": "USD, six decimal places (a decimal string: no float rounding)"}
_STATUS = {"type": "string", "enum": ["DRAFT", "PUBLISHED", "ARCHIVED"]}
_VARIABLES = {"type": "array", "items": {"type": "object"},
              "description": "typed variables: {name, type, required, default, options, description}"}
_CONFIG = {"type": "object", "description": "model settings: connection, model, system, temperature, max_tokens, "
                                            "response_format (json | {json_schema}), tools, tool_choice, "
                                            "max_validation_retries"}
_VERSION_NO = {"type": "integer", "minimum": 1, "maximum": 1_000_000}

SCHEMAS: dict[str, Any] = {
    "Prompt": obj(["id", "name", "status", "latest_version", "published_version", "created_at"],
                  id=ID, name={"type": "string"}, description=NULL_TEXT, tags=STRINGS, status=_STATUS,
                  latest_version={"type": "integer"}, published_version=_NULL_INT, published_at=NULL_TIME,
                  created_at=TIME, updated_at=TIME),
    "PromptVersion": obj(["version", "status", "template", "variables", "config", "created_at"],
                         version={"type": "integer"}, status=_STATUS, template={"type": "string"},
                         variables=_VARIABLES, config=_CONFIG, change_log=NULL_TEXT, created_at=TIME,
                         created_by=NULL_ID, published_at=NULL_TIME, published_by=NULL_ID, archived_at=NULL_TIME),
    "PromptValidation": obj(["id", "name", "type", "config", "is_active"], id=ID, name={"type": "string"},
                            type={"type": "string", "enum": ["SCHEMA", "REGEX", "FUNCTION"]},
                            config={"type": "object"}, is_active={"type": "boolean"}),
    "PromptRun": obj(
        ["execution_id", "status", "version", "inputs", "validation_status", "attempts", "tokens", "latency_ms",
         "cost_usd"],
        execution_id=ID, status=NULL_TEXT, priority=NULL_TEXT, version=_NULL_INT, inputs={"type": "object"},
        output=NULL_TEXT, validated_output={"description": "the output that passed validation (JSON or text)"},
        validation_status={"type": "string", "enum": ["PENDING", "PASSED", "FAILED", "SKIPPED"]},
        validation_errors=STRINGS, attempts=_COUNT,
        tokens=obj(["input", "output", "total"], input=_COUNT, output=_COUNT, total=_COUNT),
        latency_ms=_COUNT, cost_usd=_MONEY, error=NULL_TEXT, created_at=NULL_TIME),
    "PromptVersionStats": obj(
        ["version", "runs", "calls", "succeeded", "failed", "validation_passed", "validation_failed", "tokens_in",
         "tokens_out", "cost_usd", "cost_per_run_usd", "latency_ms"],
        version=_NULL_INT, runs=_COUNT, calls=_COUNT, succeeded=_COUNT, failed=_COUNT, validation_passed=_COUNT,
        validation_failed=_COUNT, tokens_in=_COUNT, tokens_out=_COUNT, cost_usd=_MONEY, cost_per_run_usd=_MONEY,
        latency_ms=obj(["p50", "p95"], p50={"type": ["number", "null"]}, p95={"type": ["number", "null"]})),
    "PromptRunAccepted": obj(["status", "execution_id", "prompt_id", "version", "priority"],
                             status={"const": "accepted"}, execution_id=ID, prompt_id=ID, version={"type": "integer"},
                             priority=PRIORITY),
}
SCHEMAS["PromptDetail"] = {"allOf": [ref("Prompt"), obj(
    ["versions", "validations"], versions={"type": "array", "items": ref("PromptVersion")},
    validations={"type": "array", "items": ref("PromptValidation")})]}
for _name in ("Prompt", "PromptRun", "PromptVersionStats"):
    SCHEMAS[f"{_name}List"] = obj(["items"], items={"type": "array", "items": ref(_name)})

_CONTENT = {"template": {"type": "string", "minLength": 1, "maxLength": 50_000}, "variables": _VARIABLES,
            "config": _CONFIG, "change_log": {"type": "string", "maxLength": 10_000}}


def paths(op: Callable[..., dict[str, Any]], query: Callable[..., dict[str, Any]],
          ok: Callable[..., dict[str, Any]], errors: Callable[..., dict[str, Any]],
          path: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The prompt paths, built with ``api.spec``'s helpers (passed in: no import cycle)."""
    body = (400, 413, 422)
    pid = path("prompt_id")
    version = path("version", _VERSION_NO)
    tags = ("prompts",)
    return {
        "/prompts": {
            "get": op("listPrompts", "The workspace's prompts, by name", prompts.READ,
                      {**ok(200, "PromptList", "prompts"), **errors(422)}, tags=tags,
                      params=[query("status", _STATUS, "only prompts in this status")]),
            "post": op("createPrompt", "Create a prompt with its first version (a draft)", prompts.WRITE,
                       {**ok(201, "PromptDetail", "the prompt"), **errors(409, *body)}, tags=tags,
                       example={"name": "summarise", "template": "Summarise in JSON: {{ text }}",
                                "variables": [{"name": "text", "type": "string", "required": True}],
                                "config": {"connection": "openai-main", "model": "gpt-4o-mini",
                                           "response_format": "json"}},
                       body=closed(["name", "template"], name={"type": "string", "minLength": 1, "maxLength": 200},
                                   description={"type": "string", "maxLength": 10_000},
                                   tags={**STRINGS, "maxItems": 50}, **_CONTENT)),
        },
        "/prompts/{prompt_id}": {
            "get": op("getPrompt", "One prompt with its versions and validations", prompts.READ,
                      {**ok(200, "PromptDetail", "the prompt"), **errors(404)}, tags=tags, params=[pid]),
        },
        "/prompts/{prompt_id}/archive": {
            "post": op("archivePrompt", "Archive a prompt and every version: it no longer runs", prompts.WRITE,
                       {**ok(200, "PromptDetail", "the prompt"), **errors(404, 409)}, tags=tags, params=[pid]),
        },
        "/prompts/{prompt_id}/versions": {
            "post": op("addPromptVersion", "Add the next version (a draft; versions never change once made)",
                       prompts.WRITE, {**ok(201, "PromptVersion", "the version"), **errors(404, 409, *body)},
                       tags=tags, params=[pid], body=closed(["template"], **_CONTENT),
                       example={"template": "Summarise: {{ text }}", "config": {"model": "gpt-4o-mini"}}),
        },
        "/prompts/{prompt_id}/versions/{version}/publish": {
            "post": op("publishPromptVersion", "Publish a draft version (the one published before is archived)",
                       prompts.WRITE, {**ok(200, "PromptVersion", "the version"), **errors(404, 409)},
                       tags=tags, params=[pid, version]),
        },
        "/prompts/{prompt_id}/versions/{version}/archive": {
            "post": op("archivePromptVersion", "Archive one version", prompts.WRITE,
                       {**ok(200, "PromptVersion", "the version"), **errors(404, 409)}, tags=tags,
                       params=[pid, version]),
        },
        "/prompts/{prompt_id}/validations": {
            "post": op("addPromptValidation", "Hold the prompt's output to a JSON Schema, a regex or a "
                                              "registered validator function", prompts.WRITE,
                       {**ok(201, "PromptValidation", "the validation"), **errors(404, *body)}, tags=tags,
                       params=[pid], example={"name": "shape", "type": "SCHEMA",
                                              "config": {"type": "object", "required": ["summary"]}},
                       body=closed(["name", "type", "config"], name={"type": "string", "minLength": 1,
                                                                      "maxLength": 200},
                                   type={"type": "string", "enum": ["SCHEMA", "REGEX", "FUNCTION"]},
                                   config={"type": "object"})),
        },
        "/prompts/{prompt_id}/validations/{validation_id}": {
            "delete": op("removePromptValidation", "Deactivate a validation", prompts.WRITE,
                         {**ok(204, None, "deactivated"), **errors(404)}, tags=tags,
                         params=[pid, path("validation_id")]),
        },
        "/prompts/{prompt_id}/run": {
            "post": op("runPrompt", "Run the published version (or a named published one) with variables; 202 "
                                    "once RabbitMQ confirmed the trigger", prompts.RUN,
                       {**ok(202, "PromptRunAccepted", "published"), **errors(404, 409, *body)}, tags=tags,
                       body_required=False, params=[pid],
                       example={"variables": {"text": "..."}, "priority": "HIGH"},
                       body=closed([], variables={"type": "object"}, priority=PRIORITY,
                                   version={"anyOf": [_VERSION_NO, {"const": "published"}]})),
        },
        "/prompts/{prompt_id}/runs": {
            "get": op("listPromptRuns", "The prompt's runs, newest first: inputs, output, validation, tokens, "
                                        "latency and cost", prompts.RUNS,
                      {**ok(200, "PromptRunList", "runs"), **errors(404, 422)}, tags=tags,
                      params=[pid, query("limit", {"type": "integer", "minimum": 1, "maximum": prompts.MAX_RUNS,
                                                   "default": 50}, "how many")]),
        },
        "/prompts/{prompt_id}/runs/{execution_id}": {
            "get": op("getPromptRun", "One run of the prompt", prompts.RUNS,
                      {**ok(200, "PromptRun", "the run"), **errors(404)}, tags=tags,
                      params=[pid, path("execution_id")]),
        },
        "/prompts/{prompt_id}/stats": {
            "get": op("getPromptStats", "Runs, validation outcomes, tokens, cost and latency per version",
                      prompts.RUNS, {**ok(200, "PromptVersionStatsList", "per version"), **errors(404)},
                      tags=tags, params=[pid]),
        },
    }


def handlers(result: Callable[..., Any]) -> dict[str, Callable[[Any], Any]]:
    """operationId -> handler of an ``api.handlers.Call`` (``result``: ``api.handlers.Result``)."""

    def create(call: Any) -> Any:
        b = call.body
        row = prompts.create_prompt(call.actor, name=b["name"], template=b["template"], variables=b.get("variables"),
                                    config=b.get("config"), description=b.get("description"), tags=b.get("tags"),
                                    change_log=b.get("change_log"))
        return result(201, prompts.prompt_dict(row, full=True))

    def add_version(call: Any) -> Any:
        b = call.body
        row = prompts.add_version(call.actor, call.path["prompt_id"], template=b["template"],
                                  variables=b.get("variables"), config=b.get("config"), change_log=b.get("change_log"))
        return result(201, prompts.version_dict(row))

    def add_validation(call: Any) -> Any:
        b = call.body
        row = prompts.add_validation(call.actor, call.path["prompt_id"], name=b["name"], type=b["type"],
                                     config=b["config"])
        return result(201, prompts.validation_dict(row))

    def remove_validation(call: Any) -> Any:
        prompts.remove_validation(call.actor, call.path["prompt_id"], call.path["validation_id"])
        return result(204)

    def run(call: Any) -> Any:
        b = call.body
        payload = prompts.run_prompt(call.actor, call.path["prompt_id"], variables=b.get("variables"),
                                     priority=b.get("priority"), version=b.get("version"))
        call.admit_run()  # after the checks: a refused (4xx) request spends no quota
        out = Outgoing("triggers.start", payload, priority=int(Priority.parse(payload.priority)))
        body = {"status": "accepted", "execution_id": prompts.run_started(payload),
                "prompt_id": str(prompts.get_prompt_row(call.actor, call.path["prompt_id"]).id),
                "version": payload.data["version"], "priority": payload.priority}
        return result(202, body, publish=[out], after=lambda: control.record_trigger(call.actor, payload))

    def ok(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda call: result(200, read(call))

    return {
        "listPrompts": ok(lambda c: {"items": prompts.list_prompts(c.actor, status=c.params.get("status"))}),
        "createPrompt": create,
        "getPrompt": ok(lambda c: prompts.get_prompt(c.actor, c.path["prompt_id"])),
        "archivePrompt": ok(lambda c: prompts.prompt_dict(prompts.archive(c.actor, c.path["prompt_id"]), full=True)),
        "addPromptVersion": add_version,
        "publishPromptVersion": ok(lambda c: prompts.version_dict(
            prompts.publish(c.actor, c.path["prompt_id"], c.path["version"]))),
        "archivePromptVersion": ok(lambda c: prompts.version_dict(prompts.get_version(
            prompts.archive(c.actor, c.path["prompt_id"], c.path["version"]), c.path["version"]))),
        "addPromptValidation": add_validation,
        "removePromptValidation": remove_validation,
        "runPrompt": run,
        "listPromptRuns": ok(lambda c: {"items": prompts.list_runs(c.actor, c.path["prompt_id"],
                                                                   limit=c.params.get("limit", 50))}),
        "getPromptRun": ok(lambda c: prompts.get_run(c.actor, c.path["prompt_id"], c.path["execution_id"])),
        "getPromptStats": ok(lambda c: {"items": prompts.stats(c.actor, c.path["prompt_id"])}),
    }
