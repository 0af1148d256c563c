"""Prompt operations: prompts, immutable versions, their life cycle, validations, runs, stats.

* A **prompt** has a name (unique in its workspace), a description and tags; its
  ``template``, ``variables`` and ``version`` mirror its newest version, its ``status`` is
  PUBLISHED while one of its versions is, ARCHIVED once archived (it then no longer runs).
* A **version** is created whole (template, typed variables, model ``config``) and never
  changes (a database trigger refuses it too); only its status moves, DRAFT -> PUBLISHED
  -> ARCHIVED. Publishing records who and when and archives the version published before:
  one published version at a time, the one ``version: published`` runs. Only a published
  version runs.
* **Validations** belong to the prompt (every version is held to them): JSON Schema,
  regex, or a function registered in code (``kernel.prompts.validators``).
* A **run** (``run_prompt``) is an execution of the prompt's own one-step workflow (its
  ``llm`` step runs the prompt), started with a priority; what it asked, answered, passed
  and cost are its ``llm_call`` rows. The checks a run can fail before it starts (a missing
  variable, no published version, an archived prompt) are made here, so a bad request is
  a 422 naming the field and nothing is queued.

Permissions: reading prompts is ``workflows:read``, changing them ``workflows:write``,
running one ``executions:write``, reading runs and stats ``executions:read``.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

import peewee

from shiftflow.kernel.contracts import Priority, TriggerPayload, execution_id_for
from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.prompts import PromptError, check_declared, check_validation, resolve
from shiftflow.kernel.prompts.render import compile_template
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine import llm_steps
from shiftflow.models.manage import audit, catalog
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.analytics import nearest_rank
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.prompts import Prompt, PromptValidation, PromptVersion
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

READ, WRITE, RUN, RUNS = "workflows:read", "workflows:write", "executions:write", "executions:read"
#: The fields of a version's ``config`` (model settings).
CONFIG_FIELDS = ("connection", "model", "system", "temperature", "max_tokens", "response_format", "tools",
                 "tool_choice", "max_validation_retries")
#: Most runs and calls read for one listing or one stats report.
MAX_RUNS = 500
MAX_STATS_CALLS = 20_000
#: The step of a prompt's own workflow.
RUN_STEP = "prompt"


def _locked(query: Any) -> Any:
    """``query`` row-locked for the transaction (PostgreSQL; SQLite, dev mode's, has one writer)."""
    return query.for_update() if is_postgres() else query


def _invalid(exc: PromptError) -> InvalidInput:
    return InvalidInput(exc.field, exc.reason)


def _workspace_of(actor: Principal, workspace: Any = None) -> Any:
    if actor.workspace_id is not None:
        return actor.workspace_id
    if workspace is None:
        raise InvalidInput("workspace", "name the workspace (--workspace)")
    return workspace


def get_prompt_row(actor: Principal, ref: Any) -> Prompt:
    """One prompt of the caller's workspace, by id or (the CLI's convenience) by name.

    Raises:
        NotFound: no such prompt in the workspace.
    """
    actor.require(READ)
    query = Prompt.select()
    if actor.workspace_id is not None:
        query = query.where(Prompt.workspace == actor.workspace_id)
    try:
        row = query.where(Prompt.id == uuid.UUID(str(ref))).first()
    except ValueError:
        row = query.where(Prompt.name == str(ref)).first()
    if row is None:
        raise NotFound(f"prompt {ref} does not exist")
    return row


def check_config(config: Any) -> dict[str, Any]:
    """Check a version's model settings (``config``).

    Raises:
        InvalidInput: an unknown field, a missing model, a malformed value (named).
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidInput("config", "expected an object of model settings")
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise InvalidInput(f"config.{unknown[0]}", f"unknown field; expected {', '.join(CONFIG_FIELDS)}")
    if not isinstance(config.get("model"), str) or not config["model"]:
        raise InvalidInput("config.model", "required: the model to call (gpt-4o-mini, claude-haiku-4-5...)")
    for key in ("connection", "system", "tool_choice"):
        if key in config and not isinstance(config[key], str):
            raise InvalidInput(f"config.{key}", "expected text")
    temperature = config.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                                    or not 0 <= temperature <= 2):
        raise InvalidInput("config.temperature", "expected a number from 0 to 2")
    for key, low, high in (("max_tokens", 1, 1_000_000), ("max_validation_retries", 0,
                                                          llm_steps.MAX_VALIDATION_RETRIES)):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise InvalidInput(f"config.{key}", f"expected a whole number from {low} to {high}")
    try:
        fmt = llm_steps.response_format(config.get("response_format"), "config.response_format")
        if fmt is not None and fmt.schema is not None:
            check_validation("SCHEMA", dict(fmt.schema), "config.response_format.json_schema")
        llm_steps.tools_of(config.get("tools"), "config.tools")
        if "system" in config:
            compile_template(config["system"], "config.system")
    except PromptError as exc:
        raise _invalid(exc) from None
    return dict(config)


def _check_content(template: Any, variables: Any, config: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    if not isinstance(template, str) or not template.strip():
        raise InvalidInput("template", "required: the prompt's text (Jinja2, e.g. 'Summarise {{ text }}')")
    try:
        compile_template(template)
        declared = check_declared(variables)
    except PromptError as exc:
        raise _invalid(exc) from None
    return template, declared, check_config(config)


def create_prompt(actor: Principal, *, name: Any, template: Any, variables: Any = None, config: Any = None,
                  description: Any = None, tags: Any = None, change_log: Any = None,
                  workspace: Any = None) -> Prompt:
    """Create a prompt with its first version (DRAFT).

    Raises:
        InvalidInput: a missing or malformed field (named); Conflict: the name is taken.
    """
    actor.require(WRITE)
    workspace_id = _workspace_of(actor, workspace)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("name", "required: 1-200 characters")
    if description is not None and not isinstance(description, str):
        raise InvalidInput("description", "expected text")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise InvalidInput("tags", "expected a list of strings")
    text, declared, settings = _check_content(template, variables, config)
    with database.atomic():
        if Prompt.select().where((Prompt.workspace == workspace_id) & (Prompt.name == name)).exists():
            raise Conflict(f"a prompt named {name!r} already exists in this workspace")
        prompt = Prompt.create(workspace=workspace_id, created_by=actor.user_id, name=name, description=description,
                               template=text, variables=declared, version=1, status="DRAFT", tags=tags or [])
        PromptVersion.create(workspace=workspace_id, prompt=prompt.id, version=1, template=text, variables=declared,
                             config=settings, change_log=change_log, created_by=actor.user_id, status="DRAFT")
        audit.record(actor, "prompt.created", "prompt", prompt.id, after={"name": name, "version": 1},
                     workspace_id=workspace_id)
    return prompt


def add_version(actor: Principal, ref: Any, *, template: Any, variables: Any = None, config: Any = None,
                change_log: Any = None) -> PromptVersion:
    """Add the next version (DRAFT) of a prompt; earlier versions are untouched.

    Raises:
        NotFound; InvalidInput (named); Conflict: the prompt is archived.
    """
    actor.require(WRITE)
    prompt = get_prompt_row(actor, ref)
    text, declared, settings = _check_content(template, variables, config)
    with database.atomic():
        prompt = _locked(Prompt.select().where(Prompt.id == prompt.id)).get()
        if prompt.status == "ARCHIVED":
            raise Conflict(f"prompt {prompt.name!r} is archived")
        number = (PromptVersion.select(PromptVersion.version).where(PromptVersion.prompt == prompt.id)
                  .order_by(PromptVersion.version.desc()).scalar() or 0) + 1
        version = PromptVersion.create(workspace=prompt.workspace_id, prompt=prompt.id, version=number, template=text,
                                       variables=declared, config=settings, change_log=change_log,
                                       created_by=actor.user_id, status="DRAFT")
        prompt.template, prompt.variables, prompt.version, prompt.updated_at = text, declared, number, utcnow()
        prompt.save()
        audit.record(actor, "prompt.version_added", "prompt", prompt.id, after={"version": number},
                     workspace_id=prompt.workspace_id)
    return version


def get_version(prompt: Prompt, number: Any, lock: bool = False) -> PromptVersion:
    """Version ``number`` of ``prompt`` (row-locked with ``lock``).

    Raises:
        InvalidInput: not a number. NotFound: no such version.
    """
    try:
        value = int(number)
    except (TypeError, ValueError):
        raise InvalidInput("version", f"expected a version number, got {number!r}") from None
    query = PromptVersion.select().where((PromptVersion.prompt == prompt.id) & (PromptVersion.version == value))
    row = (_locked(query) if lock else query).first()
    if row is None:
        raise NotFound(f"prompt {prompt.name!r} has no version {value}")
    return row


def publish(actor: Principal, ref: Any, number: Any) -> PromptVersion:
    """Publish a DRAFT version (who and when recorded); the version published before is archived.

    Raises:
        NotFound; Conflict: the version is not a draft, or the prompt is archived.
    """
    actor.require(WRITE)
    prompt = get_prompt_row(actor, ref)
    now = utcnow()
    with database.atomic():
        prompt = _locked(Prompt.select().where(Prompt.id == prompt.id)).get()
        if prompt.status == "ARCHIVED":
            raise Conflict(f"prompt {prompt.name!r} is archived")
        version = get_version(prompt, number, lock=True)
        if version.status != "DRAFT":
            raise Conflict(f"version {version.version} of prompt {prompt.name!r} is {version.status}: "
                           "only a draft is published (add a new version)")
        earlier = [v.version for v in PromptVersion.select().where(
            (PromptVersion.prompt == prompt.id) & (PromptVersion.status == "PUBLISHED"))]
        PromptVersion.update(status="ARCHIVED", archived_at=now).where(
            (PromptVersion.prompt == prompt.id) & (PromptVersion.status == "PUBLISHED")).execute()
        version.status, version.published_at, version.published_by_id = "PUBLISHED", now, actor.user_id
        version.save(only=[PromptVersion.status, PromptVersion.published_at, PromptVersion.published_by])
        prompt.status, prompt.published_at, prompt.updated_at = "PUBLISHED", now, now
        prompt.save()
        audit.record(actor, "prompt.published", "prompt", prompt.id,
                     before={"published": earlier}, after={"published": version.version},
                     workspace_id=prompt.workspace_id)
    return version


def archive(actor: Principal, ref: Any, number: Any = None) -> Prompt:
    """Archive one version, or (no number) the whole prompt: it no longer runs.

    Raises:
        NotFound; Conflict: already archived.
    """
    actor.require(WRITE)
    prompt = get_prompt_row(actor, ref)
    now = utcnow()
    with database.atomic():
        prompt = _locked(Prompt.select().where(Prompt.id == prompt.id)).get()
        if number is None:
            if prompt.status == "ARCHIVED":
                raise Conflict(f"prompt {prompt.name!r} is already archived")
            PromptVersion.update(status="ARCHIVED", archived_at=now).where(
                (PromptVersion.prompt == prompt.id) & (PromptVersion.status != "ARCHIVED")).execute()
            prompt.status = "ARCHIVED"
        else:
            version = get_version(prompt, number, lock=True)
            if version.status == "ARCHIVED":
                raise Conflict(f"version {version.version} of prompt {prompt.name!r} is already archived")
            version.status, version.archived_at = "ARCHIVED", now
            version.save(only=[PromptVersion.status, PromptVersion.archived_at])
            if not PromptVersion.select().where((PromptVersion.prompt == prompt.id)
                                                & (PromptVersion.status == "PUBLISHED")).exists():
                prompt.status, prompt.published_at = "DRAFT", None
        prompt.updated_at = now
        prompt.save()
        audit.record(actor, "prompt.archived", "prompt", prompt.id, after={"version": number},
                     workspace_id=prompt.workspace_id)
    return prompt


def add_validation(actor: Principal, ref: Any, *, name: Any, type: Any, config: Any) -> PromptValidation:
    """Add an active validation to a prompt (every version's output is held to it).

    Raises:
        NotFound; InvalidInput: a bad type, schema, pattern or validator name (named).
    """
    actor.require(WRITE)
    prompt = get_prompt_row(actor, ref)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("name", "required: 1-200 characters")
    kind = str(type).upper() if isinstance(type, str) else ""
    try:
        checked = check_validation(kind, config, "validation")
    except PromptError as exc:
        raise _invalid(exc) from None
    with database.atomic():
        row = PromptValidation.create(workspace=prompt.workspace_id, prompt=prompt.id, name=name, type=kind,
                                      config=checked, is_active=True)
        audit.record(actor, "prompt.validation_added", "prompt", prompt.id, after={"name": name, "type": kind},
                     workspace_id=prompt.workspace_id)
    return row


def remove_validation(actor: Principal, ref: Any, validation_id: Any) -> None:
    """Deactivate a validation (kept for the runs it judged)."""
    actor.require(WRITE)
    prompt = get_prompt_row(actor, ref)
    vid = parse_id(validation_id, "validation")
    with database.atomic():
        updated = PromptValidation.update(is_active=False, updated_at=utcnow()).where(
            (PromptValidation.id == vid) & (PromptValidation.prompt == prompt.id)).execute()
        if not updated:
            raise NotFound(f"validation {vid} does not exist")
        audit.record(actor, "prompt.validation_removed", "prompt", prompt.id, after={"validation": str(vid)},
                     workspace_id=prompt.workspace_id)


def create_from_definition(actor: Principal, data: Any, *, workspace: Any = None) -> Prompt:
    """Create a prompt from a definition (a YAML/JSON file's content): ``name``,
    ``description``, ``tags``, ``template``, ``variables``, ``config``, ``validations``
    (a list of ``{name, type, config}``), and ``publish: true`` to publish version 1.
    All in one transaction: a bad validation leaves no prompt behind.

    Raises:
        InvalidInput: a missing or malformed field (named); Conflict: the name is taken.
    """
    if not isinstance(data, dict):
        raise InvalidInput("(root)", "a prompt definition is a mapping with name, template, variables, config")
    known = {"name", "description", "tags", "template", "variables", "config", "validations", "publish",
             "change_log"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field; expected {', '.join(sorted(known))}")
    checks = data.get("validations") or []
    if not isinstance(checks, list):
        raise InvalidInput("validations", "expected a list of {name, type, config}")
    with database.atomic():
        prompt = create_prompt(actor, name=data.get("name"), template=data.get("template"),
                               variables=data.get("variables"), config=data.get("config"),
                               description=data.get("description"), tags=data.get("tags"),
                               change_log=data.get("change_log"), workspace=workspace)
        scoped = actor if actor.workspace_id is not None else Principal.operator(
            prompt.workspace_id, user_agent=actor.user_agent or "shiftflow-cli")
        for n, item in enumerate(checks):
            if not isinstance(item, dict):
                raise InvalidInput(f"validations[{n}]", "expected {name, type, config}")
            try:
                add_validation(scoped, prompt.id, name=item.get("name"), type=item.get("type"),
                               config=item.get("config"))
            except InvalidInput as exc:
                raise InvalidInput(f"validations[{n}].{exc.field.removeprefix('validation.')}", exc.reason) from None
        if data.get("publish"):
            publish(scoped, prompt.id, 1)
    return Prompt.get_by_id(prompt.id)


# --------------------------------------------------------------------------- reading


def version_dict(row: PromptVersion) -> dict[str, Any]:
    """A version as the API and CLI show it."""
    return {"version": row.version, "status": row.status, "template": row.template, "variables": row.variables,
            "config": row.config, "change_log": row.change_log, "created_at": stamp(row.created_at),
            "created_by": None if row.created_by_id is None else str(row.created_by_id),
            "published_at": stamp(row.published_at),
            "published_by": None if row.published_by_id is None else str(row.published_by_id),
            "archived_at": stamp(row.archived_at)}


def validation_dict(row: PromptValidation) -> dict[str, Any]:
    """A validation as the API and CLI show it."""
    return {"id": str(row.id), "name": row.name, "type": row.type, "config": row.config, "is_active": row.is_active}


def prompt_dict(row: Prompt, *, full: bool = False) -> dict[str, Any]:
    """A prompt; ``full`` adds its versions and validations."""
    published = (PromptVersion.select(PromptVersion.version).where(
        (PromptVersion.prompt == row.id) & (PromptVersion.status == "PUBLISHED")).scalar())
    out: dict[str, Any] = {"id": str(row.id), "name": row.name, "description": row.description, "tags": row.tags,
                           "status": row.status, "latest_version": row.version, "published_version": published,
                           "published_at": stamp(row.published_at), "created_at": stamp(row.created_at),
                           "updated_at": stamp(row.updated_at)}
    if full:
        out["versions"] = [version_dict(v) for v in PromptVersion.select().where(PromptVersion.prompt == row.id)
                           .order_by(PromptVersion.version)]
        out["validations"] = [validation_dict(v) for v in PromptValidation.select().where(
            PromptValidation.prompt == row.id).order_by(PromptValidation.created_at)]
    return out


def list_prompts(actor: Principal, *, status: Any = None, workspace: Any = None) -> list[dict[str, Any]]:
    """The workspace's prompts, by name."""
    actor.require(READ)
    query = Prompt.select().order_by(Prompt.name)
    scope = actor.workspace_id or workspace
    if scope is not None:
        query = query.where(Prompt.workspace == scope)
    if status not in (None, ""):
        if status not in ("DRAFT", "PUBLISHED", "ARCHIVED"):
            raise InvalidInput("status", "expected DRAFT, PUBLISHED or ARCHIVED")
        query = query.where(Prompt.status == status)
    return [prompt_dict(p) for p in query.limit(1000)]


def get_prompt(actor: Principal, ref: Any) -> dict[str, Any]:
    """One prompt with its versions and validations."""
    return prompt_dict(get_prompt_row(actor, ref), full=True)


# --------------------------------------------------------------------------- running


def run_workflow_name(prompt: Prompt) -> str:
    """The name of the prompt's own workflow (one ``llm`` step running the prompt)."""
    return f"prompt-run:{prompt.id}"


def run_workflow(prompt: Prompt) -> Any:
    """The prompt's own workflow, created on first use."""
    found = Workflow.get_or_none((Workflow.workspace == prompt.workspace_id)
                                 & (Workflow.name == run_workflow_name(prompt)) & (Workflow.status == "ACTIVE"))
    if found is not None:
        return found
    workspace = Workspace.get_by_id(prompt.workspace_id)
    definition = {"name": run_workflow_name(prompt), "description": f"Runs prompt {prompt.name!r} (the prompt API)",
                  "trigger": {"type": "manual"},
                  "steps": [{"id": RUN_STEP, "type": "llm", "prompt": str(prompt.id),
                             "version": "{{ trigger.version }}", "variables": "{{ trigger.variables }}"}]}
    return catalog.apply_definition(workspace, definition).workflow


def run_prompt(actor: Principal, ref: Any, *, variables: Any = None, priority: Any = None, version: Any = None,
               idempotency_key: str | None = None) -> TriggerPayload:
    """Check a run and build its ``triggers.start`` payload (the caller publishes it at the
    payload's priority, mapped to the broker's message priority by ``Priority``).

    Raises:
        NotFound: no such prompt. InvalidInput: a missing or mistyped variable
        (``variables.city``), a version that is not published (``version``), a bad
        priority. Conflict: the prompt is archived.
    """
    actor.require(RUN)
    prompt = get_prompt_row(actor, ref)
    if prompt.status == "ARCHIVED":
        raise Conflict(f"prompt {prompt.name!r} is archived")
    try:
        level = Priority.parse(priority if isinstance(priority, str) or priority is None else "?")
    except ValueError as exc:
        raise InvalidInput("priority", str(exc)) from None
    if version not in (None, "published") and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidInput("version", "expected a version number or 'published'")
    try:
        row = llm_steps.runnable_version(prompt, version)
        resolve(list(row.variables or []), variables)
    except PromptError as exc:
        raise _invalid(exc) from None
    data = {"variables": variables or {}, "version": row.version}
    problem = unstorable(data)
    if problem:
        raise InvalidInput("variables", problem)
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200 and idempotency_key.isprintable()):
        raise InvalidInput("Idempotency-Key", "expected 1-200 printable characters")
    workflow = run_workflow(prompt)
    return TriggerPayload(workflow_id=str(workflow.id), dedup_key=f"prompt:{idempotency_key or uuid.uuid4().hex}",
                          source="manual", data=data, received_at=time.time(), priority=level.name,
                          triggered_by=str(actor.user_id) if actor.user_id else "")


def run_started(payload: TriggerPayload) -> str:
    """The id the run's execution gets."""
    return str(execution_id_for(payload.workflow_id, payload.dedup_key))


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(Decimal(value).quantize(Decimal("0.000001")), "f")


def _run_dict(execution: Execution | None, calls: list[LlmCall], version_numbers: dict[Any, int]) -> dict[str, Any]:
    last = calls[-1]
    usage_in = sum(int((c.token_usage or {}).get("input", 0)) for c in calls)
    usage_out = sum(int((c.token_usage or {}).get("output", 0)) for c in calls)
    costs = [c.cost_usd for c in calls]
    known = [Decimal(c) for c in costs if c is not None]
    return {
        "execution_id": str(last.execution_id),
        "status": execution.status if execution is not None else None,
        "priority": execution.priority if execution is not None else None,
        "version": version_numbers.get(last.prompt_version_id),
        "inputs": last.inputs,
        "output": last.output,
        "validated_output": last.validated_output,
        "validation_status": last.validation_status,
        "validation_errors": last.validation_errors or [],
        "attempts": len(calls),
        "tokens": {"input": usage_in, "output": usage_out, "total": usage_in + usage_out},
        "latency_ms": sum(c.latency_ms or 0 for c in calls),
        "cost_usd": _money(sum(known, Decimal(0))) if known or not costs else None,
        "error": last.error or (execution.error if execution is not None else None),
        "created_at": stamp(calls[0].created_at),
    }


def list_runs(actor: Principal, ref: Any, *, limit: Any = 50, execution_id: Any = None) -> list[dict[str, Any]]:
    """A prompt's runs, newest first: every execution that ran it (its API runs and any
    workflow step using it), with inputs, output, validation, tokens, latency and cost."""
    actor.require(RUNS)
    prompt = get_prompt_row(actor, ref)
    try:
        count = min(max(int(limit), 1), MAX_RUNS)
    except (TypeError, ValueError):
        raise InvalidInput("limit", f"expected a whole number from 1 to {MAX_RUNS}") from None
    query = LlmCall.select().where(LlmCall.prompt == prompt.id)
    if execution_id is not None:
        query = query.where(LlmCall.execution == parse_id(execution_id, "execution"))
    newest = (LlmCall.select(LlmCall.execution).where(LlmCall.prompt == prompt.id)
              .group_by(LlmCall.execution).order_by(peewee.fn.MAX(LlmCall.created_at).desc()).limit(count))
    if execution_id is None:
        query = query.where(LlmCall.execution.in_(newest))
    by_execution: dict[Any, list[LlmCall]] = defaultdict(list)
    for call in query.order_by(LlmCall.created_at, LlmCall.attempt):
        by_execution[call.execution_id].append(call)
    executions = {e.id: e for e in Execution.select().where(Execution.id.in_(list(by_execution)))} \
        if by_execution else {}
    numbers = {v.id: v.version for v in PromptVersion.select().where(PromptVersion.prompt == prompt.id)}
    runs = [_run_dict(executions.get(eid), calls, numbers) for eid, calls in by_execution.items()]
    runs.sort(key=lambda r: r["created_at"] or "", reverse=True)
    return runs


def get_run(actor: Principal, ref: Any, execution_id: Any) -> dict[str, Any]:
    """One run of a prompt.

    Raises:
        NotFound: the execution did not run this prompt.
    """
    found = list_runs(actor, ref, execution_id=execution_id)
    if not found:
        raise NotFound(f"run {execution_id} of prompt {ref} does not exist")
    return found[0]


def stats(actor: Principal, ref: Any) -> list[dict[str, Any]]:
    """Per version of a prompt: runs, calls, validation outcomes, tokens, cost (total and
    per run) and latency (p50/p95 of calls, milliseconds), from its newest calls."""
    actor.require(RUNS)
    prompt = get_prompt_row(actor, ref)
    numbers = {v.id: v.version for v in PromptVersion.select().where(PromptVersion.prompt == prompt.id)}
    per: dict[Any, dict[str, Any]] = {}
    latencies: dict[Any, list[float]] = defaultdict(list)
    executions: dict[Any, set[Any]] = defaultdict(set)
    rows = (LlmCall.select().where(LlmCall.prompt == prompt.id).order_by(LlmCall.created_at.desc())
            .limit(MAX_STATS_CALLS))
    for call in rows:
        key = call.prompt_version_id
        s = per.setdefault(key, {"version": numbers.get(key), "calls": 0, "succeeded": 0, "failed": 0,
                                 "validation_passed": 0, "validation_failed": 0, "tokens_in": 0, "tokens_out": 0,
                                 "cost": Decimal(0)})
        s["calls"] += 1
        s["succeeded" if call.status == "SUCCEEDED" else "failed"] += 1
        if call.validation_status in ("PASSED", "FAILED"):
            s[f"validation_{call.validation_status.lower()}"] += 1
        s["tokens_in"] += int((call.token_usage or {}).get("input", 0))
        s["tokens_out"] += int((call.token_usage or {}).get("output", 0))
        s["cost"] += Decimal(call.cost_usd or 0)
        executions[key].add(call.execution_id)
        if call.latency_ms:
            latencies[key].append(float(call.latency_ms))
    out = []
    for key, s in per.items():
        run_count = len(executions[key])
        cost = s.pop("cost")
        out.append({**s, "runs": run_count, "cost_usd": _money(cost),
                    "cost_per_run_usd": _money(cost / run_count) if run_count else None,
                    "latency_ms": {"p50": nearest_rank(sorted(latencies[key]), 0.5),
                                   "p95": nearest_rank(sorted(latencies[key]), 0.95)}})
    out.sort(key=lambda s: s["version"] or 0)
    return out
