"""Workflow commands with an audit trail: apply a definition, activate, pause, archive,
and create a workflow from a catalogue template.

Status moves (anything else is a 409 naming the current status):

=========  ===================================  =================================
command    from                                 to
=========  ===================================  =================================
activate   DRAFT, PAUSED (ACTIVE: no change)    ACTIVE
pause      ACTIVE (PAUSED: no change)           PAUSED
archive    any but ARCHIVED (no change)         ARCHIVED, for good
=========  ===================================  =================================

A COMPLETED workflow reached its ``max_executions``; it is not re-activated behind the
limit's back: apply a definition with a higher limit instead.
"""

from __future__ import annotations

import copy
from typing import Any

from shiftflow.kernel.db import database
from shiftflow.kernel.errors import NotFound
from shiftflow.models.manage import audit, catalog, queries
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

#: command -> (statuses it moves from, the status it moves to)
MOVES: dict[str, tuple[tuple[str, ...], str]] = {
    "activate": (("DRAFT", "PAUSED"), "ACTIVE"),
    "pause": (("ACTIVE",), "PAUSED"),
    "archive": (("DRAFT", "ACTIVE", "PAUSED", "COMPLETED", "FAILED"), "ARCHIVED"),
}


def _workspace(actor: Principal) -> Workspace:
    row = Workspace.get_or_none(Workspace.id == actor.workspace_id)
    if row is None:
        raise NotFound("workspace does not exist")
    return row


def apply(actor: Principal, definition: Any, *, activate: bool = True) -> catalog.Applied:
    """Validate a definition and store it as the next version of the workflow of that name.

    Raises:
        InvalidInput: ``definition`` is not an object.
        DefinitionError: it does not validate (the message names the path).
    """
    actor.require("workflows:write")
    if not isinstance(definition, dict):
        raise InvalidInput("definition", "expected a workflow definition object")
    with database.atomic():
        workspace = _workspace(actor)
        name = definition.get("name")
        existing = Workflow.get_or_none((Workflow.workspace == workspace.id) & (Workflow.name == name))
        before = queries.workflow_dict(existing) if existing is not None else None
        if existing is not None and existing.status == "ARCHIVED":
            raise Conflict(f"workflow {name!r} is archived: apply it under another name")
        result = catalog.apply_definition(workspace, definition, activate=activate)
        if result.changed:
            action = "workflow.created" if existing is None else "workflow.version_created"
            audit.record(
                actor,
                action,
                "workflow",
                result.workflow.id,
                before=before,
                after={**queries.workflow_dict(result.workflow), "version": result.version},
            )
    return result


def move(actor: Principal, workflow_id: Any, command: str) -> Workflow:
    """Activate, pause or archive a workflow (see the table above); a no-op when it is there.

    Raises:
        NotFound: no such workflow in the caller's workspace.
        Conflict: the move is not allowed from the current status.
    """
    actor.require("workflows:write")
    sources, target = MOVES[command]
    with database.atomic():
        workflow = queries.get_workflow(actor, workflow_id, lock=True)
        if workflow.status == target:
            return workflow
        if workflow.status not in sources:
            raise Conflict(f"workflow {workflow.name!r} is {workflow.status}: cannot {command} it")
        before = queries.workflow_dict(workflow)
        workflow.status = target
        workflow.save()
        audit.record(
            actor,
            f"workflow.{target.lower()}",
            "workflow",
            workflow.id,
            before=before,
            after=queries.workflow_dict(workflow),
            workspace_id=workflow.workspace_id,
        )
    return workflow


def from_template(
    actor: Principal, template_key: Any, *, name: Any = None, activate: bool = False
) -> catalog.Applied:
    """Create a workflow in the caller's workspace from a catalogue template.

    Parameters:
        template_key: the template's ``key``.
        name: the new workflow's name (default: the template's definition name).
        activate: activate at once (default: DRAFT, to review first).

    Raises:
        NotFound: no such template.
        Conflict: a workflow of that name exists already.
        InvalidInput: a malformed name.
    """
    actor.require("workflows:write")
    template = WorkflowTemplate.get_or_none(WorkflowTemplate.key == str(template_key))
    if template is None:
        raise NotFound(f"template {str(template_key)[:100]!r} does not exist")
    definition = copy.deepcopy(template.definition if isinstance(template.definition, dict) else {})
    if name is not None:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput("name", "expected a non-empty text of at most 200 characters")
        definition["name"] = name.strip()
    with database.atomic():
        workspace = _workspace(actor)
        if Workflow.get_or_none(
            (Workflow.workspace == workspace.id) & (Workflow.name == definition.get("name"))
        ):
            raise Conflict(f"a workflow named {definition.get('name')!r} exists: pass another name")
        result = catalog.apply_definition(workspace, definition, activate=activate)
        result.workflow.template = template
        result.workflow.save()
        WorkflowTemplate.update(usage_count=WorkflowTemplate.usage_count + 1).where(
            WorkflowTemplate.id == template.id
        ).execute()
        audit.record(
            actor,
            "workflow.created",
            "workflow",
            result.workflow.id,
            after={**queries.workflow_dict(result.workflow), "version": result.version},
            metadata={"template": template.key},
        )
    return result
