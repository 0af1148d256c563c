"""Reading and setting a workspace's quotas (the operator), and the API's admission of runs.

The quota rules (which limits apply, the cap on queued executions) are the engine's:
``models.engine.quotas``.
"""

from __future__ import annotations

import math
from typing import Any

from shiftflow.kernel.db import database
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.quota import Admission
from shiftflow.kernel.settings import Settings
from shiftflow.models.engine.quotas import COLUMNS, QuotaExceeded, effective, queued_executions, queued_reason
from shiftflow.models.manage import audit, llm_budget
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import InvalidInput
from shiftflow.models.tables.tenancy import Workspace


def quotas_dict(workspace: Workspace, settings: Settings) -> dict[str, Any]:
    """The overrides and what is in force, as plain data (``shiftflow quotas show``), with the
    daily LLM budget and today's spend (``models.manage.llm_budget``)."""
    quotas = effective(workspace, settings)
    return {
        "workspace": workspace.slug,
        "overrides": {name: getattr(workspace, name) for name in COLUMNS},
        "effective": {
            "webhooks_per_second": quotas.webhooks.rate,
            "webhooks_burst": quotas.webhooks.burst,
            "runs_per_second": quotas.runs.rate,
            "runs_burst": quotas.runs.burst,
            "max_queued_executions": quotas.max_queued_executions,
        },
        "llm_budget": llm_budget.budget_dict(workspace, settings),
    }


def set_quotas(actor: Principal, slug: str, values: dict[str, Any]) -> Workspace:
    """Override (or, with None, reset to the default) some of a workspace's quotas (the operator).

    Parameters:
        actor: the CLI operator (a workspace member cannot raise its own quotas).
        slug: the workspace.
        values: column name (``COLUMNS``) -> value or None.

    Raises:
        NotFound: no such workspace.
        InvalidInput: an unknown column, a negative rate, a burst below 1.
    """
    if actor.via != "cli" or actor.workspace_id is not None:
        raise InvalidInput("workspace", "quotas are set by the operator (shiftflow quotas set)")
    for name, value in values.items():
        if name not in COLUMNS:
            raise InvalidInput(name, f"unknown quota; expected one of {', '.join(COLUMNS)}")
        if value is None:
            continue
        floor = 1 if name.endswith("_burst") else 0
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < floor
        ):
            raise InvalidInput(name, f"expected a number of at least {floor}, or 'default'")
    with database.atomic():
        workspace = Workspace.get_or_none(Workspace.slug == slug)
        if workspace is None:
            raise NotFound(f"workspace {slug!r} does not exist")
        before = {name: getattr(workspace, name) for name in COLUMNS}
        for name, value in values.items():
            setattr(workspace, name, value)
        workspace.save(only=[getattr(Workspace, name) for name in values])
        audit.record(
            actor,
            "workspace.quotas_set",
            "workspace",
            workspace.id,
            before=before,
            after={name: getattr(workspace, name) for name in COLUMNS},
            workspace_id=workspace.id,
        )
    return workspace


class RunAdmission:
    """The management API's admission of executions it starts (run, re-run).

    Parameters:
        settings: the deployment's default quotas.
        admission: the buckets (``kernel.quota.Admission``: Redis-backed when configured).
    """

    def __init__(self, settings: Settings, admission: Admission) -> None:
        self.settings = settings
        self.admission = admission

    def admit(self, actor: Principal) -> None:
        """Admit one more execution of the caller's workspace, or refuse it.

        The queued cap is checked first, so that a refusal costs no token.

        Raises:
            QuotaExceeded: the workspace is over its run quota, or at its cap of queued executions.
        """
        if actor.workspace_id is None:
            return  # the CLI operator
        workspace = Workspace.get_by_id(actor.workspace_id)
        quotas = effective(workspace, self.settings)
        cap = quotas.max_queued_executions
        if cap > 0:
            count = queued_executions(workspace.id, cap)
            if count >= cap:
                raise QuotaExceeded(queued_reason(count, cap) + "; retry once some have started", 5.0)
        wait = self.admission.admit(f"runs:{workspace.id}", quotas.runs)
        if wait > 0:
            raise QuotaExceeded(
                f"run quota exceeded: this workspace may start {quotas.runs.describe('executions')} "
                "through the API; retry after Retry-After seconds",
                wait,
            )
