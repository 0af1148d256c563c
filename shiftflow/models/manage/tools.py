"""The tool registry and the integration catalogue as a workspace sees them.

Tools and integrations are declared in code (``kernel.tools.registry``,
``kernel.integrations.catalogue``, plus the installed plugins); what a workspace adds is
its choice of which tools are enabled (``WorkspaceTool``, no row = enabled) and how often
it has called each (its ``ToolExecution`` rows). The API and the CLI call these functions.
"""

from __future__ import annotations

from typing import Any

import peewee
from peewee import fn

from shiftflow.kernel.db import database
from shiftflow.kernel.integrations.catalogue import IntegrationCatalogue, default_catalogue
from shiftflow.kernel.tools.base import Tool
from shiftflow.kernel.tools.registry import ToolRegistry, default_registry
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import InvalidInput
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution, WorkspaceTool


def _workspace(actor: Principal) -> Any:
    if actor.workspace_id is None:
        raise InvalidInput("workspace", "name the workspace (--workspace)")
    return actor.workspace_id


def _choices(workspace_id: Any) -> dict[str, bool]:
    rows = WorkspaceTool.select(WorkspaceTool.tool_name, WorkspaceTool.enabled).where(
        WorkspaceTool.workspace == workspace_id)
    return {r.tool_name: bool(r.enabled) for r in rows}


def _usage(workspace_id: Any, name: str | None = None) -> dict[str, int]:
    query = (ToolExecution.select(ToolRow.name, fn.COUNT(ToolExecution.id).alias("calls"))
             .join(ToolRow, on=(ToolExecution.tool == ToolRow.id))
             .where(ToolExecution.workspace == workspace_id)
             .group_by(ToolRow.name))
    if name is not None:
        query = query.where(ToolRow.name == name)
    rows: Any = query.tuples()  # (name, calls)
    return {str(name): int(calls) for name, calls in rows}


def tool_dict(tool: Tool, source: str, enabled: bool, usage: int) -> dict[str, Any]:
    """A tool as the API and the CLI show it: its declaration, where it came from, whether
    the workspace has it enabled, and how many calls the workspace made."""
    return {**tool.describe(), "source": source, "enabled": enabled, "usage_count": usage}


def list_tools(actor: Principal, *, category: str | None = None,
               registry: ToolRegistry | None = None) -> list[dict[str, Any]]:
    """Every registered tool (optionally one category's), by name."""
    actor.require("tools:read")
    registry = registry or default_registry()
    workspace = _workspace(actor)
    choices, usage = _choices(workspace), _usage(workspace)
    return [tool_dict(t, registry.source(t.name), choices.get(t.name, True), usage.get(t.name, 0))
            for t in registry if category in (None, "", t.category)]


def get_tool(actor: Principal, name: str, *, registry: ToolRegistry | None = None) -> dict[str, Any]:
    """One tool.

    Raises:
        UnknownTool: no such tool (404; the message lists the known ones).
    """
    actor.require("tools:read")
    registry = registry or default_registry()
    tool = registry.get(name)
    workspace = _workspace(actor)
    row = WorkspaceTool.get_or_none((WorkspaceTool.workspace == workspace) & (WorkspaceTool.tool_name == name))
    return tool_dict(tool, registry.source(name), row is None or bool(row.enabled), _usage(workspace, name).get(name, 0))


def set_enabled(actor: Principal, name: str, enabled: bool, *,
                registry: ToolRegistry | None = None) -> dict[str, Any]:
    """Enable or disable the tool ``name`` for the caller's workspace (audited as
    ``tool.enabled`` / ``tool.disabled``, also when nothing changed, so the trail shows
    who confirmed it).

    Raises:
        UnknownTool: no such tool.
        InvalidInput: ``enabled`` is not a boolean.
    """
    actor.require("tools:write")
    if not isinstance(enabled, bool):
        raise InvalidInput("enabled", "expected true or false")
    registry = registry or default_registry()
    registry.get(name)
    workspace = _workspace(actor)
    with database.atomic():
        row = WorkspaceTool.get_or_none((WorkspaceTool.workspace == workspace) & (WorkspaceTool.tool_name == name))
        before = row is None or bool(row.enabled)
        try:
            with database.atomic():
                if row is None:
                    WorkspaceTool.create(workspace=workspace, tool_name=name, enabled=enabled, updated_at=utcnow())
                else:
                    row.enabled, row.updated_at = enabled, utcnow()
                    row.save()
        except peewee.IntegrityError:  # a concurrent first choice: write over it
            WorkspaceTool.update(enabled=enabled, updated_at=utcnow()).where(
                (WorkspaceTool.workspace == workspace) & (WorkspaceTool.tool_name == name)).execute()
        audit.record(actor, "tool.enabled" if enabled else "tool.disabled", "tool", name,
                     before={"enabled": before}, after={"enabled": enabled})
    return get_tool(actor, name, registry=registry)


def list_integrations(actor: Principal, *, category: str | None = None,
                      catalogue: IntegrationCatalogue | None = None) -> list[dict[str, Any]]:
    """Every integration of the catalogue (optionally one category's), by key, each with
    the JSON Schema of the credentials a connection to it needs."""
    actor.require("integrations:read")
    catalogue = catalogue or default_catalogue()
    return [{**i.describe(), "source": catalogue.source(i.key)} for i in catalogue
            if category in (None, "", i.category)]


def get_integration(actor: Principal, key: str, *, catalogue: IntegrationCatalogue | None = None) -> dict[str, Any]:
    """One integration.

    Raises:
        UnknownIntegration: no such key (404; the message lists the known ones).
    """
    actor.require("integrations:read")
    catalogue = catalogue or default_catalogue()
    return {**catalogue.get(key).describe(), "source": catalogue.source(key)}
