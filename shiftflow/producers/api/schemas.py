"""The components of the management API's OpenAPI document: response schemas, shared pieces.

Request schemas are inline in ``api.spec`` (the API validates bodies with them, so
they must stand alone); responses refer to these by ``$ref``.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.contracts import EXECUTION_SOURCES, Priority
from shiftflow.kernel.definition import TRIGGER_TYPES
from shiftflow.kernel.integrations.base import RATE_LIMITS_SCHEMA
from shiftflow.models.manage.access import PERMISSIONS
from shiftflow.models.manage.queries import EXECUTION_STATUSES, STEP_STATUSES, WORKFLOW_STATUSES
from shiftflow.models.tables.side_effects import EFFECT_STATES

NULL_TEXT = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
ID = {"type": "string", "format": "uuid"}
NULL_ID = {"type": ["string", "null"], "format": "uuid"}
ANY: dict[str, Any] = {}
#: Roles, spelled as the API returns them (a client generator makes one enum of them).
ROLES = ["OWNER", "ADMIN", "MEMBER", "VIEWER"]
ROLE_IN = {"type": "string", "enum": ROLES}
PRIORITY = {"type": "string", "enum": [p.name for p in Priority]}
TRIGGER_TYPE = {"type": "string", "enum": list(TRIGGER_TYPES)}
STRINGS = {"type": "array", "items": {"type": "string"}}
SCOPES = {
    "type": "array",
    "minItems": 1,
    "maxItems": 32,
    "items": {"type": "string", "enum": ["*", "read", *PERMISSIONS]},
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def closed(required: list[str], **properties: Any) -> dict[str, Any]:
    return {**obj(required, **properties), "additionalProperties": False}


def page(item: str) -> dict[str, Any]:
    return obj(
        ["items", "next_cursor"],
        items={"type": "array", "items": ref(item)},
        next_cursor={**NULL_TEXT, "description": "pass as `cursor` for the next page; null on the last"},
    )


SCHEMAS: dict[str, Any] = {
    "Error": obj(["error"], error={"type": "string", "description": "what went wrong, naming the field"}),
    "Workspace": obj(
        ["id", "slug", "name", "plan", "created_at"],
        id=ID,
        slug={"type": "string"},
        name={"type": "string"},
        plan={"type": "string"},
        created_at=TIME,
    ),
    "Member": obj(
        ["id", "user_id", "email", "name", "role", "created_at"],
        id=ID,
        user_id=ID,
        email=NULL_TEXT,
        name=NULL_TEXT,
        role=ROLE_IN,
        created_at=TIME,
    ),
    "MemberList": obj(["items"], items={"type": "array", "items": ref("Member")}),
    "ApiKey": obj(
        [
            "id",
            "name",
            "prefix",
            "scopes",
            "user_id",
            "active",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "created_by_user_id",
            "created_by_key_id",
            "created_via",
        ],
        id=ID,
        name={"type": "string"},
        prefix={"type": "string", "pattern": "^sfk_[0-9a-f]{12}$"},
        scopes={"type": "array", "items": {"type": "string"}},
        user_id=NULL_ID,
        active={"type": "boolean"},
        created_at=TIME,
        expires_at=NULL_TIME,
        last_used_at=NULL_TIME,
        revoked_at=NULL_TIME,
        created_by_user_id={**NULL_ID, "description": "the member who made the key (null: the CLI operator)"},
        created_by_key_id={**NULL_ID, "description": "the key that made it"},
        created_via={
            "type": ["string", "null"],
            "enum": ["api", "cli", None],
            "description": "api or cli; null for keys made before this was recorded",
        },
    ),
    "ApiKeyCreated": {
        "allOf": [
            ref("ApiKey"),
            obj(["key"], key={"type": "string", "description": "the key itself: shown once, store it now"}),
        ]
    },
    "ApiKeyList": obj(["items"], items={"type": "array", "items": ref("ApiKey")}),
    "Workflow": obj(
        [
            "id",
            "name",
            "description",
            "status",
            "trigger_type",
            "current_version",
            "max_executions",
            "execution_count",
            "template_id",
            "created_at",
            "updated_at",
        ],
        id=ID,
        name={"type": "string"},
        description=NULL_TEXT,
        status={"type": "string", "enum": list(WORKFLOW_STATUSES)},
        trigger_type=TRIGGER_TYPE,
        current_version={"type": "integer", "minimum": 1},
        max_executions={"type": ["integer", "null"]},
        execution_count={"type": "integer"},
        template_id=NULL_ID,
        created_at=TIME,
        updated_at=TIME,
    ),
    "WorkflowPage": page("Workflow"),
    "Applied": {
        "allOf": [
            ref("Workflow"),
            obj(["version", "changed"], version={"type": "integer"}, changed={"type": "boolean"}),
        ]
    },
    "Version": obj(
        ["version", "created_at", "change_description"],
        version={"type": "integer"},
        created_at=TIME,
        change_description=NULL_TEXT,
    ),
    "VersionList": obj(["items"], items={"type": "array", "items": ref("Version")}),
    "VersionDetail": {"allOf": [ref("Version"), obj(["definition"], definition={"type": "object"})]},
    "Execution": obj(
        [
            "id",
            "workflow_id",
            "workflow_version",
            "status",
            "source",
            "dedup_key",
            "priority",
            "parent_id",
            "error",
            "progress",
            "created_at",
            "started_at",
            "completed_at",
            "duration_ms",
        ],
        id=ID,
        workflow_id=ID,
        workflow_version={"type": "integer"},
        status={"type": "string", "enum": list(EXECUTION_STATUSES)},
        source={"type": "string", "enum": list(EXECUTION_SOURCES)},
        dedup_key={"type": "string"},
        priority=PRIORITY,
        parent_id=NULL_ID,
        error=NULL_TEXT,
        progress={"type": "integer", "minimum": 0, "maximum": 100},
        created_at=TIME,
        started_at=NULL_TIME,
        completed_at=NULL_TIME,
        duration_ms={"type": ["integer", "null"]},
    ),
    "ExecutionPage": page("Execution"),
    "Step": obj(
        [
            "step_id",
            "iteration",
            "type",
            "status",
            "attempts",
            "retry_count",
            "input",
            "output",
            "error",
            "created_at",
            "started_at",
            "completed_at",
            "duration_ms",
        ],
        step_id={"type": "string"},
        iteration={"type": "integer"},
        type={"type": "string"},
        status={"type": "string", "enum": list(STEP_STATUSES)},
        attempts={"type": "integer"},
        retry_count={"type": "integer"},
        input=ANY,
        output=ANY,
        error=NULL_TEXT,
        created_at=TIME,
        started_at=NULL_TIME,
        completed_at=NULL_TIME,
        duration_ms={"type": ["integer", "null"]},
    ),
    "ExecutionDetail": {
        "allOf": [
            ref("Execution"),
            obj(
                ["trigger", "result", "steps", "children"],
                trigger=ANY,
                result=ANY,
                steps={
                    "type": "array",
                    "items": ref("Step"),
                    "description": "the step timeline, oldest first",
                },
                children={
                    "type": "array",
                    "items": ID,
                    "description": "re-runs and sub-workflow executions",
                },
            ),
        ]
    },
    "LogEntry": obj(
        ["timestamp", "level", "message", "step_id", "metadata"],
        timestamp=NULL_TIME,
        level=NULL_TEXT,
        message=NULL_TEXT,
        step_id=NULL_TEXT,
        metadata={"type": "object"},
    ),
    "LogPage": obj(
        ["items", "next_cursor"],
        items={"type": "array", "items": ref("LogEntry")},
        next_cursor={
            **NULL_TEXT,
            "description": "pass as `cursor` for the next page; null on the last page",
        },
    ),
    "Accepted": obj(
        ["status", "execution_id", "execution_key", "workflow_id"],
        status={"const": "accepted"},
        execution_id={
            **ID,
            "description": "the id the execution has once a worker created it: poll "
            "`GET /executions/{execution_id}` (404 until then); the same for a retry with the same "
            "Idempotency-Key",
        },
        execution_key={
            "type": "string",
            "description": "the execution's dedup key "
            "(`GET /executions?key=...` finds it once a worker created it)",
        },
        workflow_id=ID,
    ),
    "Rerun": obj(
        ["execution", "parent_id", "published", "created"],
        execution=ref("Execution"),
        parent_id=ID,
        published={
            "type": "boolean",
            "description": "false: the broker was unreachable and the timer loop publishes the first steps",
        },
        created={
            "type": "boolean",
            "description": "false: an earlier request with the same Idempotency-Key started this re-run",
        },
    ),
    "Cancelled": obj(["execution"], execution=ref("Execution")),
    "ApprovalDecision": obj(
        ["execution_id", "step_id", "approved", "by", "comment"],
        execution_id=ID,
        step_id={"type": "string"},
        approved={"type": "boolean"},
        by={"type": "string", "description": "who decided: the key's user, or the key"},
        comment={"type": "string"},
    ),
    "EventDelivered": obj(
        ["key", "resumed"],
        key={"type": "string"},
        resumed={"type": "integer", "minimum": 0, "description": "steps resumed (0: none was waiting)"},
    ),
    "DeadLetter": obj(
        ["id", "message_id", "queue", "actor", "execution_id", "error", "created_at", "replayed_at"],
        id=ID,
        message_id={"type": "string"},
        queue={"type": "string"},
        actor={"type": "string"},
        execution_id=NULL_TEXT,
        error=NULL_TEXT,
        created_at=TIME,
        replayed_at=NULL_TIME,
    ),
    "DeadLetterDetail": {"allOf": [ref("DeadLetter"), obj(["payload"], payload=ANY)]},
    "DeadLetterPage": page("DeadLetter"),
    "ReplayOutcome": obj(
        ["id", "outcome"],
        id=ID,
        outcome={"type": "string", "enum": ["replayed", "would_replay", "skipped"]},
        actor={"type": "string"},
        queue={"type": "string"},
        message_id={"type": "string"},
        reason={"type": "string"},
    ),
    "Replay": obj(
        ["matched", "replayed", "skipped", "dry_run"],
        matched={"type": "integer"},
        replayed={"type": "array", "items": ref("ReplayOutcome")},
        skipped={"type": "array", "items": ref("ReplayOutcome")},
        dry_run={"type": "boolean"},
    ),
    "Effect": obj(
        ["id", "execution_id", "step_id", "iteration", "kind", "state", "attempts", "result", "error",
         "step_status", "created_at", "updated_at"],
        id=ID,
        execution_id=ID,
        step_id={"type": "string"},
        iteration={"type": "integer", "minimum": 0},
        kind={"type": "string", "description": "http, or sideshift.shift (settled with `shiftflow sideshift reconcile`)"},
        state={"type": "string", "enum": list(EFFECT_STATES),
               "description": "UNKNOWN: sent by an attempt that never recorded the answer; settle it"},
        attempts={"type": "integer", "minimum": 0, "description": "how many times the call was sent"},
        external_ref=NULL_TEXT,
        result={**ANY, "description": "the call's result (DONE)"},
        error=NULL_TEXT,
        step_status={"type": ["string", "null"], "description": "WAITING: the step waits for this settlement"},
        created_at=TIME,
        updated_at=TIME,
        sent_at=NULL_TIME,
        completed_at=NULL_TIME,
    ),
    "EffectPage": page("Effect"),
    "AuditEntry": obj(
        [
            "id",
            "action",
            "entity_type",
            "entity_id",
            "user_id",
            "api_key_id",
            "before",
            "after",
            "metadata",
            "ip",
            "user_agent",
            "created_at",
        ],
        id=ID,
        action={"type": "string"},
        entity_type={"type": "string"},
        entity_id=NULL_TEXT,
        user_id=NULL_ID,
        api_key_id=NULL_ID,
        before=ANY,
        after=ANY,
        metadata={"type": "object"},
        ip=NULL_TEXT,
        user_agent=NULL_TEXT,
        created_at=TIME,
    ),
    "AuditPage": page("AuditEntry"),
    "Template": obj(
        [
            "id",
            "key",
            "name",
            "description",
            "category",
            "trigger_type",
            "tags",
            "required_integrations",
            "is_popular",
            "usage_count",
            "definition",
        ],
        id=ID,
        key={"type": "string"},
        name={"type": "string"},
        description={"type": "string"},
        category={"type": "string"},
        trigger_type=TRIGGER_TYPE,
        tags=STRINGS,
        required_integrations=STRINGS,
        is_popular={"type": "boolean"},
        usage_count={"type": "integer"},
        definition=ANY,
    ),
    "TemplateList": obj(["items"], items={"type": "array", "items": ref("Template")}),
}


#: A tool's name (``email.send``), as the registry spells it.
TOOL_NAME = {"type": "string", "pattern": r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", "maxLength": 150}
#: An integration's key (``smtp``), as the catalogue spells it.
INTEGRATION_KEY = {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}
#: A connection's name, as steps refer to it.
CONNECTION_NAME = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,99}$"}
_LIMITS = {
    "type": ["object", "null"],
    "properties": {"per_second": {"type": "number"}, "per_minute": {"type": "number"}, "burst": {"type": "integer"}},
}
#: A connection's own rate limits in a request: any of the fields (0: no limit on that
#: scale), over the integration's; null: back to the integration's.
CONNECTION_LIMITS = {
    **RATE_LIMITS_SCHEMA,
    "type": ["object", "null"],
    "description": "the connection's own rate limits over its integration's (per_second, per_minute, burst); "
                   "null: the integration's",
}

SCHEMAS.update({
    "Tool": obj(
        ["name", "description", "category", "queue", "effect", "integration", "params_schema", "result_schema",
         "source", "enabled", "usage_count"],
        name={"type": "string"},
        description={"type": "string"},
        category={"type": "string"},
        queue={"type": "string", "description": "the per-kind queue its calls run on (tools, tools.email...)"},
        effect={"type": "string", "enum": ["once", "repeatable"]},
        integration={**NULL_TEXT, "description": "the integration whose connection it needs, if any"},
        params_schema={"type": "object", "description": "JSON Schema of the step's `with`"},
        result_schema={"type": "object", "description": "JSON Schema of its result"},
        source={"type": "string", "description": "builtin, or the plugin's <distribution>:<entry point>"},
        enabled={"type": "boolean", "description": "enabled for this workspace"},
        usage_count={"type": "integer", "minimum": 0, "description": "calls made by this workspace"},
    ),
    "ToolList": obj(["items"], items={"type": "array", "items": ref("Tool")}),
    # Built by hand: a property named "required" cannot be a keyword of obj().
    "CredentialField": {
        "type": "object",
        "required": ["name", "required", "secret"],
        "properties": {
            "name": {"type": "string"},
            "required": {"type": "boolean"},
            "secret": {"type": "boolean", "description": "never shown again once stored (masked as ***)"},
            "description": {"type": "string"},
            "default": ANY,
            "choices": {"type": "array", "items": ANY},
        },
    },
    "Integration": obj(
        ["key", "name", "description", "category", "auth_type", "credentials_schema", "secret_fields", "fields",
         "tools", "limits", "shared_limits", "cooldown_scope", "base_url", "docs_url", "source"],
        key={"type": "string"},
        name={"type": "string"},
        description={"type": "string"},
        category={"type": "string"},
        auth_type={"type": "string", "enum": ["OAUTH2", "API_KEY", "BASIC", "NONE"]},
        credentials_schema={"type": "object", "description": "JSON Schema of a connection's credentials; "
                            "secret fields carry x-secret: true"},
        secret_fields=STRINGS,
        fields={"type": "array", "items": ref("CredentialField")},
        tools=STRINGS,
        limits=_LIMITS,
        shared_limits=_LIMITS,
        cooldown_scope={"type": "string", "enum": ["connection", "integration"]},
        base_url=NULL_TEXT,
        docs_url=NULL_TEXT,
        source={"type": "string"},
    ),
    "IntegrationList": obj(["items"], items={"type": "array", "items": ref("Integration")}),
    "Connection": obj(
        ["id", "name", "integration", "credentials", "credentials_readable", "is_active", "test_status", "last_tested_at", "last_error",
         "expires_at", "rate_limits", "effective_limits", "user_id", "created_at", "updated_at"],
        id=ID,
        name={"type": "string"},
        integration={"type": "string"},
        credentials={"type": "object", "description": "masked: every secret field as ***; never the values"},
        credentials_readable={"type": "boolean", "description": "false: no configured key opens the stored "
                              "credentials (sealed under a retired key); give them again"},
        is_active={"type": "boolean"},
        test_status={"type": "string", "enum": ["PENDING", "SUCCESS", "FAILED"]},
        last_tested_at=NULL_TIME,
        last_error=NULL_TEXT,
        expires_at=NULL_TIME,
        rate_limits={**_LIMITS, "description": "the connection's own limits (null: its integration's)"},
        effective_limits={**_LIMITS, "description": "the limits its calls are held to: its own over the "
                          "integration's and the deployment's"},
        user_id=NULL_ID,
        created_at=TIME,
        updated_at=TIME,
    ),
    "ConnectionList": obj(["items"], items={"type": "array", "items": ref("Connection")}),
    "CheckResult": obj(
        ["status", "test_status", "message", "retryable", "seconds", "details"],
        status={"type": "string", "enum": ["passed", "failed", "unverified"],
                "description": "unverified: nothing wrong found, but the service offers no harmless proof"},
        test_status={"type": "string", "enum": ["PENDING", "SUCCESS", "FAILED"]},
        message={"type": "string", "description": "for people; never holds a secret value"},
        retryable={"type": "boolean", "description": "a failure that may pass later (timeout, 5xx)"},
        seconds={"type": "number"},
        details={"type": "object"},
    ),
    "ConnectionTest": obj(["connection", "result"], connection=ref("Connection"), result=ref("CheckResult")),
    "Artifact": obj(
        ["id", "execution_id", "step_execution_id", "type", "name", "description", "mime_type", "size_bytes",
         "sha256", "created_at"],
        id=ID,
        execution_id=ID,
        step_execution_id=NULL_ID,
        type={"type": "string", "enum": ["SCREENSHOT", "PDF", "FILE", "IMAGE", "VIDEO", "JSON", "TEXT"]},
        name={"type": "string"},
        description=NULL_TEXT,
        mime_type=NULL_TEXT,
        size_bytes={"type": ["integer", "null"]},
        sha256=NULL_TEXT,
        created_at=TIME,
    ),
    "ArtifactList": obj(["items"], items={"type": "array", "items": ref("Artifact")}),
})
