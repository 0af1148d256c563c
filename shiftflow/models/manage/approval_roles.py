"""Who may decide an approval step: the role its definition asks for.

An approval step may say ``with: {role: admin}`` (or ``owner``, ``member``): only a caller
whose workspace role is at least that may approve or reject it. Without ``role`` any caller
allowed to write executions may (as before). A user approval and an admin verification of
the pattern-feedback workflow are two approval steps with two roles.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.errors import DefinitionError
from shiftflow.models.engine import runs
from shiftflow.models.manage.access import ROLES, Principal
from shiftflow.models.manage.problems import Forbidden
from shiftflow.models.tables.executions import Execution


def required_role(execution: Execution, step_id: str) -> str | None:
    """The role (upper case) an approval step of ``execution`` asks for, or None."""
    definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
    try:
        step = definition.step(step_id)
    except DefinitionError:
        return None
    role: Any = step.inputs.get("role") if step.type == "approval" else None
    return role.upper() if isinstance(role, str) and role.upper() in ROLES else None


def check(actor: Principal, execution: Execution, step_id: str) -> str | None:
    """Refuse a decision by a caller below the step's role; return the role asked for.

    Raises:
        Forbidden: the caller's role is lower than the step's ``role`` (the message names both).
    """
    role = required_role(execution, step_id)
    if role is not None and ROLES.index(actor.role) > ROLES.index(role):
        raise Forbidden(f"step {step_id!r} needs the role {role.lower()} to decide; yours is {actor.role.lower()}")
    return role
