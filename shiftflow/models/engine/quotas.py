"""Per-workspace quotas: which limits apply to a workspace, and the cap on its queued executions.

The rules live here, in the engine, because starting an execution enforces the queued cap;
reading and setting a workspace's quotas, and the API's run admission, are in
``models.manage.quotas``.

Three quotas keep one workspace from starving the others (README "Quotas"):

* **webhooks**: a token bucket of accepted webhooks per workspace (all its endpoints),
  checked by the ingress after the signature (``producers.ingress.app``), answered 429;
* **runs**: a token bucket of executions started through the management API (run,
  re-run), answered 429 (``RunAdmission``);
* **queued executions**: how many of a workspace's executions may wait PENDING for a
  concurrency slot. Enforced where an execution would be queued (``refuse_queueing``, in
  ``start.start_execution``: the execution ends FAILED with a reason naming the cap, so
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
from shiftflow.kernel.errors import ShiftFlowError
from shiftflow.kernel.quota import Limit
from shiftflow.kernel.settings import Settings
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import Workspace

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


def queued_executions(workspace_id: Any, up_to: int) -> int:
    """PENDING executions of a workspace, counted up to ``up_to`` (the partial index
    ``idx_execution_queued`` holds only PENDING rows, and the count stops at the cap)."""
    query = (
        Execution.select(peewee.SQL("1"))
        .where((Execution.workspace == workspace_id) & (Execution.status == "PENDING"))
        .limit(up_to)
    )
    return int(query.count())  # Peewee counts a limited query as a subquery: the limit holds


def queued_reason(count: int, cap: int) -> str:
    """Why a workspace may not queue more: ``count`` queued against its ``cap``."""
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
    return "not queued: " + queued_reason(count - 1, cap)
