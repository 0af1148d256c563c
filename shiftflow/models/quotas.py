"""Per-workspace quotas: which limits apply to a workspace, and the cap on its queued executions.

Three quotas keep one workspace from starving the others (README "Quotas"):

* **webhooks**: a token bucket of accepted webhooks per workspace (all its endpoints),
  checked by the ingress after the signature (``producers.ingress``), answered 429;
* **runs**: a token bucket of executions started through the management API (run,
  re-run), answered 429 (``RunAdmission``);
* **queued executions**: how many of a workspace's executions may wait PENDING for a
  concurrency slot. Enforced where an execution would be queued (``refuse_queueing``, in
  ``runs.start_execution``: the execution ends FAILED with a reason naming the cap, so
  nothing is lost and it can be re-run), and checked before the API starts one (429).

Each has a deployment default (``SHIFTFLOW_QUOTA_*``) that a workspace may override
(``Workspace.quota_*`` columns, NULL = the default; ``shiftflow quotas set``). A rate of 0
means no limit, as does a queued cap of 0. The buckets themselves are
``kernel.quota``'s, shared through Redis when ``SHIFTFLOW_REDIS_URL`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import peewee

from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.errors import NotFound, ShiftFlowError
from shiftflow.kernel.quota import Admission, Limit
from shiftflow.kernel.settings import Settings
from shiftflow.models import audit_log
from shiftflow.models.access import Principal
from shiftflow.models.executions import Execution
from shiftflow.models.problems import InvalidInput
from shiftflow.models.tenancy import Workspace

#: Override columns and what they hold, in the order ``shiftflow quotas`` prints them.
COLUMNS = (
    "quota_webhooks_per_second",
    "quota_webhooks_burst",
    "quota_runs_per_second",
    "quota_runs_burst",
    "quota_max_queued_executions",
)


class QuotaExceeded(ShiftFlowError):
    """Raised when a workspace is over one of its quotas: retry after ``retry_after`` seconds.

    Neither permanent (it passes) nor transient (nothing failed): the API answers 429
    with ``Retry-After``, and the message names the limit.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 (``Retry-After`` takes no fractions)."""
        return str(max(1, math.ceil(self.retry_after)))


@dataclass(frozen=True)
class Quotas:
    """The quotas in force for one workspace."""

    webhooks: Limit
    runs: Limit
    max_queued_executions: int


def limit(rate: float | None, burst: int | None, default_rate: float, default_burst: int) -> Limit:
    """One bucket's limit: each NULL override takes the deployment's default."""
    return Limit(default_rate if rate is None else float(rate), default_burst if burst is None else int(burst))


def effective(workspace: Workspace, settings: Settings) -> Quotas:
    """The quotas of ``workspace``: its overrides, else the settings' defaults."""
    cap = workspace.quota_max_queued_executions
    return Quotas(
        webhooks=limit(
            workspace.quota_webhooks_per_second,
            workspace.quota_webhooks_burst,
            settings.quota_webhooks_per_second,
            settings.quota_webhooks_burst,
        ),
        runs=limit(
            workspace.quota_runs_per_second,
            workspace.quota_runs_burst,
            settings.quota_runs_per_second,
            settings.quota_runs_burst,
        ),
        max_queued_executions=settings.quota_max_queued_executions if cap is None else int(cap),
    )


def quotas_dict(workspace: Workspace, settings: Settings) -> dict[str, Any]:
    """The overrides and what is in force, as plain data (``shiftflow quotas show``)."""
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
        audit_log.record(
            actor,
            "workspace.quotas_set",
            "workspace",
            workspace.id,
            before=before,
            after={name: getattr(workspace, name) for name in COLUMNS},
            workspace_id=workspace.id,
        )
    return workspace


def queued_executions(workspace_id: Any, up_to: int) -> int:
    """PENDING executions of a workspace, counted up to ``up_to`` (the partial index
    ``idx_execution_queued`` holds only PENDING rows, and the count stops at the cap)."""
    query = (
        Execution.select(peewee.SQL("1"))
        .where((Execution.workspace == workspace_id) & (Execution.status == "PENDING"))
        .limit(up_to)
    )
    return int(query.count())  # Peewee counts a limited query as a subquery: the limit holds


def _queued_reason(count: int, cap: int) -> str:
    return (
        f"the workspace has {count} executions waiting for a concurrency slot, its cap of queued "
        f"executions is {cap}"
    )


def refuse_queueing(execution: Execution, settings: Settings) -> str | None:
    """Why ``execution`` (just inserted PENDING, its lane full) may not wait, or None.

    Call in the transaction that inserted it. On PostgreSQL an advisory lock per
    workspace serialises these decisions, so concurrent triggers cannot both take the
    last place (the count sees the other's committed row once the lock is granted).
    """
    workspace = Workspace.get_by_id(execution.workspace_id)
    cap = effective(workspace, settings).max_queued_executions
    if cap <= 0:
        return None
    if is_postgres():
        database.execute_sql(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"shiftflow:queued:{workspace.id}",)
        )
    count = queued_executions(workspace.id, cap + 1)  # this execution is one of them
    if count <= cap:
        return None
    return "not queued: " + _queued_reason(count - 1, cap)


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
                raise QuotaExceeded(_queued_reason(count, cap) + "; retry once some have started", 5.0)
        wait = self.admission.admit(f"runs:{workspace.id}", quotas.runs)
        if wait > 0:
            raise QuotaExceeded(
                f"run quota exceeded: this workspace may start {quotas.runs.describe('executions')} "
                "through the API; retry after Retry-After seconds",
                wait,
            )
