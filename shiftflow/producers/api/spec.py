"""The management API's OpenAPI 3.1 document, as data.

It is the contract in both directions: ``producers.api.app`` validates request bodies
against the schemas here (so a 422 says exactly what the document says) and the test
suite runs schemathesis over it, checking every response against its schema. Every
operation carries ``x-permission`` (the permission it needs, ``access.PERMISSIONS``) and
``x-tenant`` (``workspace`` for tenant data, ``global`` for the template catalogue),
which the tenant-isolation test reads so that a new endpoint cannot escape it.
"""

from __future__ import annotations

from typing import Any

from shiftflow.models.manage.paging import MAX_LIMIT
from shiftflow.models.manage.queries import EXECUTION_STATUSES, WORKFLOW_STATUSES
from shiftflow.models.tables.side_effects import EFFECT_STATES
from shiftflow.producers.api import analytics as api_analytics
from shiftflow.producers.api import llm_budget as api_llm_budget
from shiftflow.producers.api import multi_phase as api_multi_phase
from shiftflow.producers.api import prompts as api_prompts
from shiftflow.producers.api import tasks as api_tasks
from shiftflow.producers.api import tool_runs as api_tool_runs
from shiftflow.producers.api.schemas import (
    ANY,
    CONNECTION_LIMITS,
    CONNECTION_NAME,
    ID,
    INTEGRATION_KEY,
    NULL_ID,
    NULL_TIME,
    ROLE_IN,
    SCHEMAS,
    SCOPES,
    TIME,
    TOOL_NAME,
    closed,
    ref,
)

VERSION = "1.0.0"
PREFIX = "/api/v1"


_ERRORS = {
    400: "the body is not JSON, or not sent as application/json",
    401: "no API key, or an unknown, expired or revoked one",
    403: "the key's role or scopes do not allow this",
    404: "no such object in the key's workspace",
    409: "the object's state does not allow this",
    413: "the body is too large",
    422: "a field or query parameter is invalid (the message names it)",
    429: "too many failed authentications from this address or for this key, or the workspace is over "
    "a quota (its run quota, or its cap of queued executions; the message names it): retry after the "
    "Retry-After seconds",
    503: "PostgreSQL, MongoDB or RabbitMQ is unreachable, or the trigger queue is full; retry later. Also "
    "when the deployment lacks a setting the operation needs (SHIFTFLOW_SECRET_KEYS to seal a connection)",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": _ERRORS[c], "content": {"application/json": {"schema": ref("Error")}}}
        for c in (401, 403, 429, 503, *codes)
    }


def _ok(status: int, schema: str | None, description: str) -> dict[str, Any]:
    if schema is None:
        return {str(status): {"description": description}}
    return {
        str(status): {"description": description, "content": {"application/json": {"schema": ref(schema)}}}
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any] = ID) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _idempotency_key(description: str) -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
        "description": description,
    }


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "page size")
_CURSOR = _query("cursor", {"type": "string"}, "the `next_cursor` of the previous page")
_SINCE = _query("since", TIME, "created at or after (RFC 3339)")
_UNTIL = _query("until", TIME, "created before (RFC 3339)")


def _op(
    op_id: str,
    summary: str,
    permission: str | None,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    body_required: bool = True,
    tenant: str = "workspace",
    tags: tuple[str, ...] = (),
    example: Any = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": responses,
        "x-permission": permission,
        "x-tenant": tenant,
        "tags": list(tags),
    }
    if params:
        op["parameters"] = params
    if body is not None:
        media: dict[str, Any] = {"schema": body}
        if example is not None:
            media["example"] = example
        op["requestBody"] = {"required": body_required, "content": {"application/json": media}}
    return op


_BODY = (400, 413, 422)

PATHS: dict[str, Any] = {
    "/openapi.json": {
        "get": {
            **_op(
                "getOpenApi",
                "This document",
                None,
                {
                    "200": {
                        "description": "the OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
                tenant="global",
                tags=("meta",),
            ),
            "security": [],
        }
    },
    "/workspace": {
        "get": _op(
            "getWorkspace",
            "The key's workspace",
            "workspace:read",
            {**_ok(200, "Workspace", "the workspace"), **_errors(404)},
            tags=("workspace",),
        ),
        "patch": _op(
            "updateWorkspace",
            "Rename the workspace",
            "workspace:write",
            {**_ok(200, "Workspace", "renamed"), **_errors(404, *_BODY)},
            tags=("workspace",),
            example={"name": "Acme"},
            body=closed(["name"], name={"type": "string", "minLength": 1, "maxLength": 200}),
        ),
        "delete": _op(
            "deleteWorkspace",
            "Delete the workspace with everything in it (owners only)",
            "workspace:delete",
            {**_ok(204, None, "deleted"), **_errors(404, 409)},
            tags=("workspace",),
        ),
    },
    "/members": {
        "get": _op(
            "listMembers",
            "Members and their roles",
            "members:read",
            {**_ok(200, "MemberList", "members"), **_errors()},
            tags=("members",),
        ),
        "post": _op(
            "addMember",
            "Add a user (created by email if new) with a role",
            "members:write",
            {**_ok(201, "Member", "added"), **_errors(409, *_BODY)},
            tags=("members",),
            example={"email": "new@example.com", "role": "MEMBER"},
            body=closed(
                ["email", "role"],
                email={"type": "string", "format": "email", "maxLength": 320},
                role=ROLE_IN,
                name={"type": "string", "minLength": 1, "maxLength": 200},
            ),
        ),
    },
    "/members/{member_id}": {
        "patch": _op(
            "setMemberRole",
            "Change a member's role (owners only for owner changes)",
            "members:write",
            {**_ok(200, "Member", "changed"), **_errors(404, 409, *_BODY)},
            tags=("members",),
            example={"role": "VIEWER"},
            params=[_path("member_id")],
            body=closed(["role"], role=ROLE_IN),
        ),
        "delete": _op(
            "removeMember",
            "Remove a member and revoke their keys in this workspace",
            "members:write",
            {**_ok(204, None, "removed"), **_errors(404, 409)},
            tags=("members",),
            params=[_path("member_id")],
        ),
    },
    "/keys": {
        "get": _op(
            "listKeys",
            "API keys (all with keys:read, else the caller's own with keys:self)",
            "keys:self",
            {**_ok(200, "ApiKeyList", "keys"), **_errors()},
            tags=("keys",),
        ),
        "post": _op(
            "createKey",
            "Create an API key; the response holds the key, shown once. A key never has more scopes "
            "or a later expiry than the key that creates it",
            "keys:self",
            {**_ok(201, "ApiKeyCreated", "created"), **_errors(404, *_BODY)},
            tags=("keys",),
            example={"name": "ci", "scopes": ["read"]},
            body=closed(
                ["name"],
                name={"type": "string", "minLength": 1, "maxLength": 200},
                scopes={**SCOPES, "description": "default: the scopes of the key that creates it"},
                expires_at={
                    **NULL_TIME,
                    "description": "default: never, or the creating key's expiry when it has one",
                },
                user_id={
                    **NULL_ID,
                    "description": "the member the key acts as (default: the caller; others need "
                    "keys:write and a role at most the caller's)",
                },
            ),
        ),
    },
    "/keys/{key_id}": {
        "delete": _op(
            "revokeKey",
            "Revoke an API key now",
            "keys:self",
            {**_ok(204, None, "revoked"), **_errors(404, 409)},
            tags=("keys",),
            params=[_path("key_id")],
        ),
    },
    "/workflows": {
        "get": _op(
            "listWorkflows",
            "Workflows, newest first",
            "workflows:read",
            {**_ok(200, "WorkflowPage", "a page of workflows"), **_errors(422)},
            tags=("workflows",),
            params=[
                _query("status", {"type": "string", "enum": list(WORKFLOW_STATUSES)}, "only this status"),
                _LIMIT,
                _CURSOR,
            ],
        ),
        "post": _op(
            "applyWorkflow",
            "Apply a definition: a new workflow, or the next version of the one of that name",
            "workflows:write",
            {
                **_ok(201, "Applied", "a new workflow"),
                **_ok(200, "Applied", "a new version, or unchanged"),
                **_errors(409, *_BODY),
            },
            tags=("workflows",),
            example={
                "definition": {
                    "name": "hello",
                    "trigger": {"type": "manual"},
                    "steps": [{"id": "t", "type": "transform", "with": {"output": {"ok": True}}}],
                }
            },
            body=closed(
                ["definition"], definition={"type": "object"}, activate={"type": "boolean", "default": True}
            ),
        ),
    },
    "/workflows/{workflow_id}": {
        "get": _op(
            "getWorkflow",
            "One workflow",
            "workflows:read",
            {**_ok(200, "Workflow", "the workflow"), **_errors(404)},
            tags=("workflows",),
            params=[_path("workflow_id")],
        ),
    },
    "/workflows/{workflow_id}/versions": {
        "get": _op(
            "listVersions",
            "Every version, newest first",
            "workflows:read",
            {**_ok(200, "VersionList", "versions"), **_errors(404)},
            tags=("workflows",),
            params=[_path("workflow_id")],
        ),
    },
    "/workflows/{workflow_id}/versions/{version}": {
        "get": _op(
            "getVersion",
            "One version with its definition",
            "workflows:read",
            {**_ok(200, "VersionDetail", "the version"), **_errors(404)},
            tags=("workflows",),
            params=[_path("workflow_id"), _path("version", {"type": "integer", "minimum": 1})],
        ),
    },
    **{
        f"/workflows/{{workflow_id}}/{verb}": {
            "post": _op(
                f"{verb}Workflow",
                summary,
                "workflows:write",
                {**_ok(200, "Workflow", "the workflow"), **_errors(404, 409)},
                tags=("workflows",),
                params=[_path("workflow_id")],
            )
        }
        for verb, summary in (
            ("activate", "Activate (from DRAFT or PAUSED)"),
            ("pause", "Pause (from ACTIVE)"),
            ("archive", "Archive, for good"),
        )
    },
    "/workflows/{workflow_id}/run": {
        "post": _op(
            "runWorkflow",
            "Trigger an execution with input; 202 once RabbitMQ confirmed the trigger",
            "executions:write",
            {**_ok(202, "Accepted", "published"), **_errors(404, 409, 429, *_BODY)},
            tags=("executions",),
            body_required=False,
            example={"input": {"amount": 42}},
            params=[
                _path("workflow_id"),
                _idempotency_key("a retry with the same key makes no second execution"),
            ],
            body=closed(
                [],
                input={"type": "object", "description": "the trigger data"},
                priority={"type": "string", "enum": ["LOW", "NORMAL", "HIGH", "CRITICAL"]},
            ),
        ),
    },
    "/executions": {
        "get": _op(
            "listExecutions",
            "Executions, newest first, filtered",
            "executions:read",
            {**_ok(200, "ExecutionPage", "a page of executions"), **_errors(422)},
            tags=("executions",),
            params=[
                _query("status", {"type": "string", "enum": list(EXECUTION_STATUSES)}, "only this status"),
                _query("workflow_id", ID, "only this workflow's"),
                _query("key", {"type": "string"}, "only the execution with this dedup key"),
                _SINCE,
                _UNTIL,
                _LIMIT,
                _CURSOR,
            ],
        ),
    },
    "/executions/{execution_id}": {
        "get": _op(
            "getExecution",
            "An execution with its step timeline",
            "executions:read",
            {**_ok(200, "ExecutionDetail", "the execution"), **_errors(404)},
            tags=("executions",),
            params=[_path("execution_id")],
        ),
    },
    "/executions/{execution_id}/logs": {
        "get": _op(
            "getExecutionLogs",
            "The execution's log documents (MongoDB), oldest first; follow `next_cursor` to the last line",
            "executions:read",
            {**_ok(200, "LogPage", "a page of log documents"), **_errors(404, 422)},
            tags=("executions",),
            params=[_path("execution_id"), _LIMIT, _CURSOR],
        ),
    },
    "/executions/{execution_id}/cancel": {
        "post": _op(
            "cancelExecution",
            "Cancel an execution that has not finished",
            "executions:write",
            {**_ok(200, "Cancelled", "cancelled"), **_errors(404, 409)},
            tags=("executions",),
            params=[_path("execution_id")],
        ),
    },
    "/executions/{execution_id}/rerun": {
        "post": _op(
            "rerunExecution",
            "Re-run a failed execution from its failed step (a new execution); 409 while "
            "another re-run of its lineage has not ended",
            "executions:write",
            {
                **_ok(202, "Rerun", "started"),
                **_ok(200, "Rerun", "an earlier request with this Idempotency-Key started it"),
                **_errors(404, 409, 422, 429),
            },
            tags=("executions",),
            params=[
                _path("execution_id"),
                _idempotency_key(
                    "a retry with the same key (for the same execution) returns the same re-run, "
                    "never a second one"
                ),
            ],
        ),
    },
    "/executions/{execution_id}/approvals/{step_id}": {
        "post": _op(
            "decideApproval",
            "Approve (or reject, failing the step) an approval step waiting in an execution",
            "executions:write",
            {**_ok(200, "ApprovalDecision", "decided"), **_errors(404, 409, *_BODY)},
            tags=("executions",),
            body_required=False,
            example={"approved": True, "comment": "looks right"},
            params=[
                _path("execution_id"),
                _path("step_id", {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,99}$"}),
            ],
            body=closed(
                [],
                approved={"type": "boolean", "default": True},
                comment={"type": "string", "maxLength": 2000},
            ),
        ),
    },
    "/events": {
        "post": _op(
            "sendEvent",
            "Resume the workspace's wait_event steps waiting for this key (the data is their output)",
            "executions:write",
            {**_ok(200, "EventDelivered", "delivered"), **_errors(*_BODY)},
            tags=("executions",),
            example={"key": "order-42-paid", "data": {"paid": True}},
            body=closed(
                ["key"],
                key={"type": "string", "minLength": 1, "maxLength": 200},
                data={"type": "object", "description": "the resumed steps' output (`{{ steps.<id>.output.event }}`)"},
            ),
        ),
    },
    "/dead-letters": {
        "get": _op(
            "listDeadLetters",
            "Messages the workers gave up on, newest first",
            "dead_letters:read",
            {**_ok(200, "DeadLetterPage", "a page of dead letters"), **_errors(422)},
            tags=("dead letters",),
            params=[
                _query("queue", {"type": "string"}, "only this queue"),
                _query("actor", {"type": "string"}, "only this actor"),
                _SINCE,
                _UNTIL,
                _query("replayed", {"type": "boolean"}, "only replayed (true) or not (false)"),
                _LIMIT,
                _CURSOR,
            ],
        ),
    },
    "/dead-letters/{dead_letter_id}": {
        "get": _op(
            "getDeadLetter",
            "One dead letter with its stored message",
            "dead_letters:read",
            {**_ok(200, "DeadLetterDetail", "the dead letter"), **_errors(404)},
            tags=("dead letters",),
            params=[_path("dead_letter_id")],
        ),
    },
    "/dead-letters/replay": {
        "post": _op(
            "replayDeadLetters",
            "Re-enqueue dead letters by filter or ids, oldest first",
            "dead_letters:replay",
            {**_ok(200, "Replay", "what was replayed and skipped"), **_errors(404, *_BODY)},
            tags=("dead letters",),
            example={"queue": "triggers", "dry_run": True},
            body=closed(
                [],
                queue={"type": "string"},
                actor={"type": "string"},
                since=TIME,
                until=TIME,
                ids={"type": "array", "minItems": 1, "maxItems": 1000, "items": ID},
                limit={"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                force={"type": "boolean", "default": False},
                dry_run={"type": "boolean", "default": False},
            ),
        ),
    },
    "/effects": {
        "get": _op(
            "listEffects",
            "Outside calls marked `effect: once` (their ledger), newest first; UNKNOWN ones wait for an operator",
            "executions:read",
            {**_ok(200, "EffectPage", "a page of effects"), **_errors(422)},
            tags=("effects",),
            params=[
                _query("state", {"type": "string", "enum": list(EFFECT_STATES)}, "only this state, e.g. UNKNOWN"),
                _query("execution_id", ID, "only this execution's"),
                _LIMIT,
                _CURSOR,
            ],
        ),
    },
    "/effects/{effect_id}": {
        "get": _op(
            "getEffect",
            "One `effect: once` call's ledger row",
            "executions:read",
            {**_ok(200, "Effect", "the effect"), **_errors(404)},
            tags=("effects",),
            params=[_path("effect_id")],
        ),
    },
    "/effects/{effect_id}/settle": {
        "post": _op(
            "settleEffect",
            "Settle a call whose outcome is unknown: done (with its result: the step succeeds with it and the "
            "execution goes on), failed (with a reason: the step fails), or retry (the call is made once more)",
            "effects:settle",
            {**_ok(200, "Effect", "settled"), **_errors(404, 409, *_BODY)},
            tags=("effects",),
            example={"outcome": "done", "result": {"status": 200, "json": {"id": "pay-42"}}},
            params=[_path("effect_id")],
            body=closed(
                ["outcome"],
                outcome={"type": "string", "enum": ["done", "failed", "retry"]},
                result={**ANY, "description": "the call's result as found on the other side (done only; required)"},
                reason={"type": "string", "minLength": 1, "maxLength": 2000,
                        "description": "why the call failed (failed only; required)"},
            ),
        ),
    },
    "/audit-log": {
        "get": _op(
            "listAuditLog",
            "Audit-log entries, newest first",
            "audit:read",
            {**_ok(200, "AuditPage", "a page of entries"), **_errors(422)},
            tags=("audit",),
            params=[
                _query("action", {"type": "string"}, "e.g. workflow.paused"),
                _query("entity_type", {"type": "string"}, "e.g. execution"),
                _query("entity_id", {"type": "string"}, "one object's entries"),
                _SINCE,
                _UNTIL,
                _LIMIT,
                _CURSOR,
            ],
        ),
    },
    "/templates": {
        "get": _op(
            "listTemplates",
            "The template catalogue (shared by every workspace)",
            "templates:read",
            {**_ok(200, "TemplateList", "templates"), **_errors()},
            tenant="global",
            tags=("templates",),
            params=[_query("category", {"type": "string"}, "only this category")],
        ),
    },
    "/templates/{template_key}/workflows": {
        "post": _op(
            "createFromTemplate",
            "Create a workflow in the key's workspace from a template",
            "workflows:write",
            {**_ok(201, "Applied", "created"), **_errors(404, 409, *_BODY)},
            tenant="global",
            tags=("templates",),
            body_required=False,
            example={"name": "my copy"},
            params=[_path("template_key", {"type": "string", "minLength": 1, "maxLength": 100})],
            body=closed(
                [],
                name={"type": "string", "minLength": 1, "maxLength": 200},
                activate={"type": "boolean", "default": False},
            ),
        ),
    },
}

_CREDENTIALS = {"type": "object", "description": "fields of the integration's credentials_schema "
                "(GET /integrations/{integration_key}); secret ones are never returned"}

PATHS.update({
    "/tools": {
        "get": _op(
            "listTools",
            "The tool registry (built-in and plugin tools) with their parameter and result schemas, and "
            "whether each is enabled for this workspace",
            "tools:read",
            {**_ok(200, "ToolList", "tools, by name"), **_errors(422)},
            tenant="global",
            tags=("tools",),
            params=[_query("category", {"type": "string", "maxLength": 100}, "only this category")],
        ),
    },
    "/tools/{tool_name}": {
        "get": _op(
            "getTool",
            "One tool",
            "tools:read",
            {**_ok(200, "Tool", "the tool"), **_errors(404)},
            tenant="global",
            tags=("tools",),
            params=[_path("tool_name", TOOL_NAME)],
        ),
        "put": _op(
            "setToolEnabled",
            "Enable or disable a tool for this workspace (a disabled tool's steps are refused)",
            "tools:write",
            {**_ok(200, "Tool", "the tool, as the workspace now has it"), **_errors(404, *_BODY)},
            tenant="global",
            tags=("tools",),
            example={"enabled": False},
            params=[_path("tool_name", TOOL_NAME)],
            body=closed(["enabled"], enabled={"type": "boolean"}),
        ),
    },
    "/integrations": {
        "get": _op(
            "listIntegrations",
            "The integration catalogue, each with the JSON Schema of the credentials a connection needs",
            "integrations:read",
            {**_ok(200, "IntegrationList", "integrations, by key"), **_errors(422)},
            tenant="global",
            tags=("integrations",),
            params=[_query("category", {"type": "string", "maxLength": 100}, "only this category")],
        ),
    },
    "/integrations/{integration_key}": {
        "get": _op(
            "getIntegration",
            "One integration",
            "integrations:read",
            {**_ok(200, "Integration", "the integration"), **_errors(404)},
            tenant="global",
            tags=("integrations",),
            params=[_path("integration_key", INTEGRATION_KEY)],
        ),
    },
    "/connections": {
        "get": _op(
            "listConnections",
            "The workspace's connections, by name; credentials masked",
            "connections:read",
            {**_ok(200, "ConnectionList", "connections"), **_errors(422)},
            tags=("connections",),
            params=[_query("integration", INTEGRATION_KEY, "only this integration's")],
        ),
        "post": _op(
            "createConnection",
            "Store credentials for an integration: validated against its schema (422 names the field), "
            "encrypted at rest, never returned",
            "connections:write",
            {**_ok(201, "Connection", "created (credentials masked)"), **_errors(409, *_BODY)},
            tags=("connections",),
            example={"integration": "smtp", "name": "smtp-main",
                     "credentials": {"host": "smtp.example.com", "username": "robot", "password": "…"}},
            body=closed(["integration", "name", "credentials"], integration=INTEGRATION_KEY, name=CONNECTION_NAME,
                        credentials=_CREDENTIALS, rate_limits=CONNECTION_LIMITS),
        ),
    },
    "/connections/{connection_id}": {
        "get": _op(
            "getConnection",
            "One connection; credentials masked",
            "connections:read",
            {**_ok(200, "Connection", "the connection"), **_errors(404)},
            tags=("connections",),
            params=[_path("connection_id")],
        ),
        "patch": _op(
            "updateConnection",
            "Rename, (de)activate, or change credentials (merged field by field over the stored ones; "
            "null removes a field; the result is validated again)",
            "connections:write",
            {**_ok(200, "Connection", "changed (credentials masked)"), **_errors(404, 409, *_BODY)},
            tags=("connections",),
            example={"credentials": {"password": "…"}},
            params=[_path("connection_id")],
            body=closed([], name=CONNECTION_NAME, credentials=_CREDENTIALS, is_active={"type": "boolean"},
                        rate_limits=CONNECTION_LIMITS),
        ),
        "delete": _op(
            "deleteConnection",
            "Delete a connection; steps naming it fail from then on",
            "connections:write",
            {**_ok(204, None, "deleted"), **_errors(404)},
            tags=("connections",),
            params=[_path("connection_id")],
        ),
    },
    "/connections/{connection_id}/test": {
        "post": _op(
            "testConnection",
            "Prove the stored credentials with one harmless call (an SMTP login, a token request...); a "
            "refusal is a 200 with result.status failed",
            "connections:write",
            {**_ok(200, "ConnectionTest", "the outcome, also stored on the connection"), **_errors(404)},
            tags=("connections",),
            params=[_path("connection_id")],
        ),
    },
    "/executions/{execution_id}/artifacts": {
        "get": _op(
            "listArtifacts",
            "The files an execution's tools made, oldest first",
            "executions:read",
            {**_ok(200, "ArtifactList", "artifacts"), **_errors(404)},
            tags=("artifacts",),
            params=[_path("execution_id")],
        ),
    },
    "/artifacts/{artifact_id}/content": {
        "get": _op(
            "getArtifactContent",
            "Download an artifact's bytes (read through the artifact store; its MIME type is in the listing)",
            "executions:read",
            {
                "200": {
                    "description": "the content, as an attachment",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_errors(404),
            },
            tags=("artifacts",),
            params=[_path("artifact_id")],
        ),
    },
})

PATHS.update(api_analytics.paths(_op, _query, _ok, _errors))
SCHEMAS.update(api_analytics.SCHEMAS)
PATHS.update(api_tool_runs.paths(_op, _query, _path, _ok, _errors))
SCHEMAS.update(api_tool_runs.SCHEMAS)
PATHS.update(api_multi_phase.paths(_op, _query, _path, _ok, _errors, _idempotency_key))
SCHEMAS.update(api_multi_phase.SCHEMAS)
PATHS.update(api_tasks.paths(_op, _query, _ok, _errors))
SCHEMAS.update(api_tasks.SCHEMAS)
PATHS.update(api_prompts.paths(_op, _query, _ok, _errors, _path))
SCHEMAS.update(api_prompts.SCHEMAS)
PATHS.update(api_llm_budget.paths(_op, _ok, _errors))
SCHEMAS.update(api_llm_budget.SCHEMAS)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ShiftFlow management API",
        "version": VERSION,
        "description": "Workspaces, members, API keys, workflows, executions, dead letters, templates, "
        "analytics and the audit log. Authenticate with `Authorization: Bearer sfk_...`. Errors are "
        '`{"error": "..."}`. Lists are keyset pages, newest first. A path this document does not '
        "list answers 404 (no redirects: `/workflows/` is not `/workflows`); a method a listed path "
        "does not have answers 405 with an `Allow` header naming the ones it has.",
    },
    "servers": [{"url": PREFIX}],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key, sfk_..."}
        },
    },
}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, operation) of the document, methods upper-case."""
    return [(method.upper(), path, op) for path, item in PATHS.items() for method, op in item.items()]
