"""What a workflow's tool steps need from the workspace that applies it, checked when applied.

The definition alone is checked by the kernel (an unknown tool, parameters that fail the
tool's schema as written). What depends on the workspace is checked here, before anything
is stored: a tool the workspace (or the catalogue) has disabled, and a ``connection`` the
workspace does not have (another workspace's connection of that name is not its own).
Each refusal is a ``DefinitionError`` naming the step's field, e.g.
``steps[3].connection: no active connection 'smtp-main' in this workspace``; the API
answers 422 with it.

These are checked again at run time (``models.engine.tool_calls``): a tool disabled or a
connection deleted after the workflow was applied fails the step, naming it.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.definition import Definition
from shiftflow.kernel.errors import DefinitionError
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import WorkspaceTool


def check_tool_steps(workspace_id: Any, definition: Definition) -> None:
    """Refuse tool steps the workspace cannot run: every problem, in one message.

    Raises:
        DefinitionError: a disabled tool, or a connection missing from the workspace.
    """
    problems: list[str] = []
    for index, step in enumerate(definition.steps):
        if step.type != "tool" or not step.tool:
            continue
        where, name = f"steps[{index}]", str(step.tool)
        catalogue = ToolRow.get_or_none(ToolRow.name == name)
        if catalogue is not None and not catalogue.enabled:
            problems.append(f"{where}.tool: {name} is disabled (enable it in the tool catalogue)")
        elif WorkspaceTool.disabled(workspace_id, name):
            problems.append(f"{where}.tool: {name} is disabled in this workspace (shiftflow tools enable)")
        if step.connection and not Connection.select().where(
                (Connection.workspace == workspace_id) & (Connection.name == step.connection)
                & (Connection.is_active == True)).exists():  # noqa: E712 - peewee expression
            problems.append(f"{where}.connection: no active connection {step.connection!r} in this workspace "
                            f"(create it first: POST /api/v1/connections)")
    if problems:
        raise DefinitionError("; ".join(problems))
