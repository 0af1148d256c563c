"""The management API's operations: one plain function per ``operationId`` of ``api.spec``.

Each takes the authenticated ``Call`` (caller, path, validated parameters and body)
and returns a ``Result``: the status, the body, and the messages to publish once the
command's transaction committed. They only translate between HTTP data and the
models' command and query functions, which the CLI calls too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shiftflow.kernel.contracts import Priority, execution_id_for
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.models.manage import (
    apikeys,
    artifacts,
    catalog,
    connections,
    control,
    effects,
    lifecycle,
    queries,
    replay,
    signals,
    tools,
    workspaces,
)
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.paging import Page
from shiftflow.models.manage.quotas import RunAdmission
from shiftflow.producers.api import analytics as api_analytics
from shiftflow.producers.api import llm_budget as api_llm_budget
from shiftflow.producers.api import multi_phase as api_multi_phase
from shiftflow.producers.api import prompts as api_prompts
from shiftflow.producers.api import tasks as api_tasks
from shiftflow.producers.api import tool_runs as api_tool_runs

Send = Callable[..., str]


@dataclass
class Call:
    """One authenticated request, as the operation handlers see it."""

    actor: Principal
    path: dict[str, str]
    params: dict[str, Any]
    body: dict[str, Any]
    send: Send
    mongo: Callable[[], Any]
    #: The workspace quotas of executions the API starts (None: not limited).
    runs: RunAdmission | None = None
    #: The process settings (connection tests, the artifact store); None: ``get_settings()``.
    settings: Settings | None = None

    def admit_run(self) -> None:
        """Count one more execution started by the caller against its workspace's quotas.

        Raises:
            QuotaExceeded: over the run quota, or at the cap of queued executions (429).
        """
        if self.runs is not None:
            self.runs.admit(self.actor)


@dataclass
class Result:
    """What a handler answers, and what to publish once its transaction committed.

    ``fallback`` runs when publishing fails (e.g. ``control.defer_to_timers``) and makes
    the answer stand; without one the request answers 503. ``after`` runs (in a
    transaction) once the messages are published, e.g. the trigger's audit entry.
    """

    status: int
    body: Any = None
    publish: list[Outgoing] = field(default_factory=list)
    fallback: Callable[[list[Outgoing]], Any] | None = None
    after: Callable[[], Any] | None = None
    #: A body of bytes instead of JSON (an artifact's content): chunks, sent as they come.
    stream: Iterator[bytes] | None = None
    media_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _workspace(call: Call) -> Result:
    return Result(200, workspaces.workspace_dict(workspaces.current(call.actor)))


def _rename(call: Call) -> Result:
    return Result(200, workspaces.workspace_dict(workspaces.rename(call.actor, call.body["name"])))


def _delete_workspace(call: Call) -> Result:
    workspaces.delete(call.actor)
    return Result(204)


def _members(call: Call) -> Result:
    return Result(200, {"items": workspaces.list_members(call.actor)})


def _add_member(call: Call) -> Result:
    b = call.body
    return Result(201, workspaces.add_member(call.actor, b["email"], b["role"], b.get("name")))


def _set_role(call: Call) -> Result:
    return Result(200, workspaces.set_role(call.actor, call.path["member_id"], call.body["role"]))


def _remove_member(call: Call) -> Result:
    workspaces.remove_member(call.actor, call.path["member_id"])
    return Result(204)


def _keys(call: Call) -> Result:
    return Result(200, {"items": [apikeys.key_dict(k) for k in apikeys.list_keys(call.actor)]})


def _create_key(call: Call) -> Result:
    b = call.body
    row, text = apikeys.create_key(
        call.actor,
        name=b["name"],
        user_id=b.get("user_id"),
        scopes=b.get("scopes"),
        expires_at=b.get("expires_at"),
    )
    return Result(201, {**apikeys.key_dict(row), "key": text})


def _revoke_key(call: Call) -> Result:
    apikeys.revoke_key(call.actor, call.path["key_id"])
    return Result(204)


def _page(page: Page) -> Result:
    return Result(200, page.as_dict())


def _workflows(call: Call) -> Result:
    p = call.params
    return _page(
        queries.list_workflows(
            call.actor, status=p.get("status"), limit=p.get("limit"), cursor=p.get("cursor")
        )
    )


def _applied(applied: catalog.Applied) -> dict[str, Any]:
    return {**queries.workflow_dict(applied.workflow), "version": applied.version, "changed": applied.changed}


def _apply(call: Call) -> Result:
    applied = lifecycle.apply(call.actor, call.body["definition"], activate=call.body.get("activate", True))
    return Result(201 if applied.created else 200, _applied(applied))


def _workflow(call: Call) -> Result:
    return Result(200, queries.workflow_dict(queries.get_workflow(call.actor, call.path["workflow_id"])))


def _versions(call: Call) -> Result:
    return Result(200, {"items": queries.list_versions(call.actor, call.path["workflow_id"])})


def _version(call: Call) -> Result:
    return Result(200, queries.get_version(call.actor, call.path["workflow_id"], call.path["version"]))


def _mover(command: str) -> Callable[[Call], Result]:
    def handler(call: Call) -> Result:
        return Result(
            200, queries.workflow_dict(lifecycle.move(call.actor, call.path["workflow_id"], command))
        )

    return handler


def _run(call: Call) -> Result:
    payload = control.manual_trigger(
        call.actor,
        call.path["workflow_id"],
        call.body.get("input", {}),
        priority=call.body.get("priority"),
        idempotency_key=call.params.get("Idempotency-Key"),
    )
    call.admit_run()  # after the checks above: a refused (4xx) request spends no quota
    out = Outgoing("triggers.start", payload, priority=int(Priority.parse(payload.priority)))
    body = {
        "status": "accepted",
        "execution_id": str(execution_id_for(payload.workflow_id, payload.dedup_key)),
        "execution_key": payload.dedup_key,
        "workflow_id": payload.workflow_id,
    }
    return Result(202, body, publish=[out], after=lambda: control.record_trigger(call.actor, payload))


def _executions(call: Call) -> Result:
    p = call.params
    return _page(
        queries.list_executions(
            call.actor,
            status=p.get("status"),
            workflow_id=p.get("workflow_id"),
            key=p.get("key"),
            since=p.get("since"),
            until=p.get("until"),
            limit=p.get("limit"),
            cursor=p.get("cursor"),
        )
    )


def _execution(call: Call) -> Result:
    return Result(200, queries.execution_detail(call.actor, call.path["execution_id"]))


def _logs(call: Call) -> Result:
    page = queries.execution_logs(
        call.actor,
        call.path["execution_id"],
        call.mongo(),
        call.params.get("limit"),
        call.params.get("cursor"),
    )
    return Result(200, page.as_dict())


def _cancel(call: Call) -> Result:
    execution, outgoing = control.cancel(call.actor, call.path["execution_id"])
    return Result(
        200,
        {"execution": queries.execution_dict(execution)},
        publish=outgoing,
        fallback=control.defer_to_timers,
    )


def _rerun(call: Call) -> Result:
    call.actor.require("executions:write")
    call.admit_run()
    made = control.start_rerun(
        call.actor, call.path["execution_id"], idempotency_key=call.params.get("Idempotency-Key")
    )
    body = {
        "execution": queries.execution_dict(made.execution),
        "parent_id": str(made.execution.parent_id),
        "published": True,
        "created": made.created,
    }

    def fallback(unsent: list[Outgoing]) -> None:
        control.defer_to_timers(unsent)
        body["published"] = False

    return Result(202 if made.created else 200, body, publish=made.outgoing, fallback=fallback)


def _approval(call: Call) -> Result:
    b = call.body
    decision, outgoing = signals.decide_approval(
        call.actor, call.path["execution_id"], call.path["step_id"],
        approved=b.get("approved", True), comment=b.get("comment", ""),
    )
    return Result(200, decision, publish=outgoing, fallback=control.defer_to_timers)


def _event(call: Call) -> Result:
    delivered, outgoing = signals.send_event(call.actor, call.body.get("key"), call.body.get("data", {}))
    return Result(200, delivered, publish=outgoing, fallback=control.defer_to_timers)


def _dead_letters(call: Call) -> Result:
    p = call.params
    return _page(
        replay.list_dead_letters(
            call.actor,
            queue=p.get("queue"),
            actor_name=p.get("actor"),
            since=p.get("since"),
            until=p.get("until"),
            replayed=p.get("replayed"),
            limit=p.get("limit"),
            cursor=p.get("cursor"),
        )
    )


def _dead_letter(call: Call) -> Result:
    row = replay.get_dead_letter(call.actor, call.path["dead_letter_id"])
    return Result(200, replay.dead_letter_dict(row, payload=True))


def _replay(call: Call) -> Result:
    b = call.body
    report = replay.replay_dead_letters(
        call.actor,
        call.send,
        queue=b.get("queue"),
        actor_name=b.get("actor"),
        since=b.get("since"),
        until=b.get("until"),
        ids=b.get("ids"),
        limit=b.get("limit"),
        force=b.get("force", False),
        dry_run=b.get("dry_run", False),
    )
    return Result(200, report.as_dict())


def _effects(call: Call) -> Result:
    p = call.params
    return _page(effects.list_effects(call.actor, state=p.get("state"), execution_id=p.get("execution_id"),
                                         limit=p.get("limit"), cursor=p.get("cursor")))


def _effect(call: Call) -> Result:
    return Result(200, effects.effect_detail(call.actor, call.path["effect_id"]))


def _settle(call: Call) -> Result:
    b = call.body
    extra = {"result": b["result"]} if "result" in b else {}
    effect, outgoing = effects.settle(call.actor, call.path["effect_id"], b.get("outcome"),
                                         reason=b.get("reason"), **extra)
    return Result(200, effect, publish=outgoing, fallback=control.defer_to_timers)


def _audit(call: Call) -> Result:
    p = call.params
    return _page(
        queries.list_audit(
            call.actor,
            action=p.get("action"),
            entity_type=p.get("entity_type"),
            entity_id=p.get("entity_id"),
            since=p.get("since"),
            until=p.get("until"),
            limit=p.get("limit"),
            cursor=p.get("cursor"),
        )
    )


def _templates(call: Call) -> Result:
    return Result(200, {"items": queries.list_templates(call.actor, category=call.params.get("category"))})


def _from_template(call: Call) -> Result:
    b = call.body
    applied = lifecycle.from_template(
        call.actor, call.path["template_key"], name=b.get("name"), activate=b.get("activate", False)
    )
    return Result(201, _applied(applied))


def _tools(call: Call) -> Result:
    return Result(200, {"items": tools.list_tools(call.actor, category=call.params.get("category"))})


def _tool(call: Call) -> Result:
    return Result(200, tools.get_tool(call.actor, call.path["tool_name"]))


def _set_tool(call: Call) -> Result:
    return Result(200, tools.set_enabled(call.actor, call.path["tool_name"], call.body["enabled"]))


def _integrations(call: Call) -> Result:
    return Result(200, {"items": tools.list_integrations(call.actor, category=call.params.get("category"))})


def _integration(call: Call) -> Result:
    return Result(200, tools.get_integration(call.actor, call.path["integration_key"]))


def _connections(call: Call) -> Result:
    items = connections.list_connections(call.actor, integration=call.params.get("integration"),
                                         settings=call.settings)
    return Result(200, {"items": items})


def _create_connection(call: Call) -> Result:
    b = call.body
    made = connections.create_connection(call.actor, b["integration"], b["name"], b["credentials"],
                                         rate_limits=b.get("rate_limits"), settings=call.settings)
    return Result(201, made)


def _connection(call: Call) -> Result:
    row = connections.get_connection(call.actor, call.path["connection_id"])
    return Result(200, connections.connection_dict(row, settings=call.settings))


def _update_connection(call: Call) -> Result:
    b = call.body
    changed = connections.update_connection(call.actor, call.path["connection_id"], name=b.get("name"),
                                            credentials=b.get("credentials"), is_active=b.get("is_active"),
                                            rate_limits=b["rate_limits"] if "rate_limits" in b else ...,
                                            settings=call.settings)
    return Result(200, changed)


def _test_connection(call: Call) -> Result:
    return Result(200, connections.verify_connection(call.actor, call.path["connection_id"], settings=call.settings))


def _delete_connection(call: Call) -> Result:
    connections.delete_connection(call.actor, call.path["connection_id"], settings=call.settings)
    return Result(204)


def _artifacts(call: Call) -> Result:
    return Result(200, {"items": artifacts.list_artifacts(call.actor, call.path["execution_id"])})


def _artifact_content(call: Call) -> Result:
    from shiftflow.kernel.artifacts import make_store

    content = artifacts.open_content(call.actor, call.path["artifact_id"], make_store(call.settings or get_settings()))
    row = content.row
    headers = {"Content-Disposition": f'attachment; filename="{_ascii_name(row.name)}"',
               "X-Content-Type-Options": "nosniff"}
    if row.sha256:
        headers["ETag"] = f'"{row.sha256}"'
    # Always octet-stream, as the document says: served as its own type, an HTML or SVG
    # artifact would run in the API's origin. Its MIME type is in the listing.
    headers["X-Artifact-Mime-Type"] = _ascii_name(content.media_type)
    return Result(200, stream=content.chunks, media_type="application/octet-stream", headers=headers)


def _ascii_name(name: str) -> str:
    """A file name safe inside a quoted header value."""
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)[:200] or "artifact"


HANDLERS: dict[str, Callable[[Call], Result]] = {
    "getWorkspace": _workspace,
    "updateWorkspace": _rename,
    "deleteWorkspace": _delete_workspace,
    "listMembers": _members,
    "addMember": _add_member,
    "setMemberRole": _set_role,
    "removeMember": _remove_member,
    "listKeys": _keys,
    "createKey": _create_key,
    "revokeKey": _revoke_key,
    "listWorkflows": _workflows,
    "applyWorkflow": _apply,
    "getWorkflow": _workflow,
    "listVersions": _versions,
    "getVersion": _version,
    "activateWorkflow": _mover("activate"),
    "pauseWorkflow": _mover("pause"),
    "archiveWorkflow": _mover("archive"),
    "runWorkflow": _run,
    "listExecutions": _executions,
    "getExecution": _execution,
    "getExecutionLogs": _logs,
    "cancelExecution": _cancel,
    "rerunExecution": _rerun,
    "decideApproval": _approval,
    "sendEvent": _event,
    "listDeadLetters": _dead_letters,
    "getDeadLetter": _dead_letter,
    "replayDeadLetters": _replay,
    "listEffects": _effects,
    "getEffect": _effect,
    "settleEffect": _settle,
    "listAuditLog": _audit,
    "listTemplates": _templates,
    "createFromTemplate": _from_template,
    "listTools": _tools,
    "getTool": _tool,
    "setToolEnabled": _set_tool,
    "listIntegrations": _integrations,
    "getIntegration": _integration,
    "listConnections": _connections,
    "createConnection": _create_connection,
    "getConnection": _connection,
    "updateConnection": _update_connection,
    "testConnection": _test_connection,
    "deleteConnection": _delete_connection,
    "listArtifacts": _artifacts,
    "getArtifactContent": _artifact_content,
}
HANDLERS.update({op_id: api_analytics.answer(read, Result) for op_id, read in api_analytics.HANDLERS.items()})
HANDLERS.update({op_id: api_analytics.answer(read, Result) for op_id, read in api_tool_runs.HANDLERS.items()})
HANDLERS.update(api_multi_phase.handlers(Result))
HANDLERS.update(api_tasks.handlers(Result, control.defer_to_timers))
HANDLERS.update(api_prompts.handlers(Result))
HANDLERS.update(api_llm_budget.handlers(Result))
