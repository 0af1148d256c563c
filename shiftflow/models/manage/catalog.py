"""Workspace and workflow commands: apply a definition as a new version, webhooks, reads.

No access checks: the CLI operator, dev mode and tests call these directly; the management
API goes through ``lifecycle`` (audited, per principal) and ``queries``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from shiftflow.kernel.db import database
from shiftflow.kernel.definition import validate
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.runnable import check_runnable
from shiftflow.kernel.signatures import generate_secret
from shiftflow.models.manage.tool_checks import check_tool_steps
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Webhook, Workflow, WorkflowVersion


@dataclass(frozen=True)
class Applied:
    """A definition applied (``apply_definition``, and through the API ``lifecycle.apply``):
    the workflow, its version, whether anything changed and whether the workflow is new."""

    workflow: Workflow
    version: int
    changed: bool
    created: bool = False


def ensure_workspace(slug: str, name: str | None = None) -> Workspace:
    """The workspace with ``slug``, created if missing."""
    workspace, _ = Workspace.get_or_create(slug=slug, defaults={"name": name or slug})
    return workspace


def apply_definition(workspace: Workspace, data: dict[str, Any], *, activate: bool = True) -> Applied:
    """Validate ``data`` and store it as the workflow's next immutable version.

    The workflow is matched by name inside the workspace. An unchanged definition makes
    no new version. Executions already running keep the version they started with.

    Raises:
        DefinitionError: the definition does not validate, or can never run (a schedule
            or polling trigger its process would refuse, a reference that names nothing,
            a tool the workspace disabled, a connection it does not have); the message
            names the path.
    """
    definition = validate(data)
    check_runnable(definition)  # what the scheduler, poller and resolver would refuse at run time
    check_tool_steps(workspace.id, definition)  # disabled tools, connections the workspace lacks
    with database.atomic():
        workflow = Workflow.get_or_none((Workflow.workspace == workspace.id) & (Workflow.name == definition.name))
        if workflow is None:
            workflow = Workflow.create(workspace=workspace.id, name=definition.name,
                                       description=data.get("description"), trigger_type=definition.trigger_type.upper(),
                                       current_version=1, max_executions=data.get("max_executions"),
                                       status="ACTIVE" if activate else "DRAFT")
            WorkflowVersion.create(workflow=workflow.id, version=1, definition=definition.raw)
            return Applied(workflow, 1, True, True)
        current = WorkflowVersion.get(workflow=workflow.id, version=workflow.current_version)
        if current.definition == definition.raw:
            return Applied(workflow, workflow.current_version, False)
        version = workflow.current_version + 1
        WorkflowVersion.create(workflow=workflow.id, version=version, definition=definition.raw)
        workflow.current_version = version
        workflow.trigger_type = definition.trigger_type.upper()
        workflow.max_executions = data.get("max_executions")
        if activate:
            workflow.status = "ACTIVE"
        workflow.save()
        return Applied(workflow, version, True)


def create_webhook(workflow: Workflow, *, scheme: str = "standard", secret: str | None = None,
                   token: str | None = None) -> Webhook:
    """Create a webhook endpoint for ``workflow`` with a fresh token and signing secret.

    The secret is stored sealed (``webhook_secrets``); ``webhook_secrets.reveal`` shows it
    to the creator.

    Raises:
        SettingsError: ``SHIFTFLOW_SECRET_KEYS`` is not set (no secret is stored in clear).
    """
    sealed, key_id = webhook_secrets.seal([secret or generate_secret()])
    return Webhook.create(workflow=workflow.id, token=token or secrets.token_urlsafe(24), scheme=scheme,
                          sealed_secrets=sealed, key_id=key_id)


def execution(execution_id: str) -> Execution:
    """One execution by id.

    Raises:
        NotFound: no such execution.
    """
    row = Execution.get_or_none(Execution.id == execution_id)
    if row is None:
        raise NotFound(f"execution {execution_id} does not exist")
    return row


def latest_execution() -> Execution:
    """The most recently created execution.

    Raises:
        NotFound: there is none yet.
    """
    row = Execution.select().order_by(Execution.created_at.desc()).first()
    if row is None:
        raise NotFound("there are no executions yet")
    return row


def recent_executions(limit: int = 20) -> list[Execution]:
    """The newest executions first."""
    return list(Execution.select().order_by(Execution.created_at.desc()).limit(limit))
