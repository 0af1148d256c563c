"""A workspace's daily LLM budget: read with today's spend, set by the operator, lowered by the workspace.

The budget is a quota like the others (``shiftflow quotas``): the operator sets it for any
workspace, up or down, or puts the deployment's default (``SHIFTFLOW_LLM_DAILY_BUDGET_USD``)
back with None. Through the API a workspace's owners and admins (``workspace:write``) may
only *tighten* it: a new budget must not allow more than the one in force, because raising a
workspace's own limits is the operator's decision, as for every other quota.

``call_llm`` reads the column on every call (``models.engine.llm_calls.daily_budget``), so a
change applies to the next call at once.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.settings import Settings
from shiftflow.models.engine.llm_calls import spent_today, today_start
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.plain import stamp
from shiftflow.models.manage.problems import Forbidden, InvalidInput
from shiftflow.models.tables.tenancy import Workspace

#: The workspace column, and the name of the field in the API and in errors.
FIELD = "llm_daily_budget_usd"
#: Six decimal places, as every cost.
PLACES = Decimal("0.000001")
#: The largest amount the column (NUMERIC(12, 6)) holds.
MAX_USD = Decimal("999999.999999")
#: The permission an API caller needs to lower its workspace's budget.
PERMISSION = "workspace:write"


def parse_budget(value: Any, field: str = FIELD) -> Decimal | None:
    """``value`` as a budget in USD (six places), or None for the deployment's default.

    Accepts a decimal string (``"5"``, ``"0.25"``), a JSON number or a ``Decimal``.

    Raises:
        InvalidInput: not a number, negative, too large, or more than six decimal places (named ``field``).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidInput(field, "expected an amount of USD as a decimal string (e.g. \"5.00\"), or null "
                                  "for the deployment's default")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else str(value))
    except InvalidOperation:
        raise InvalidInput(field, f"{str(value)[:40]!r} is not a number of USD") from None
    if not amount.is_finite():
        raise InvalidInput(field, f"{str(value)[:40]!r} is not a number of USD")
    if amount < 0:
        raise InvalidInput(field, f"must not be negative, got {value}")
    if amount > MAX_USD:
        raise InvalidInput(field, f"at most {MAX_USD} USD, got {value}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        raise InvalidInput(field, f"at most six decimal places, got {value}")
    return amount.quantize(PLACES)


def _usd(value: Any) -> str | None:
    return None if value is None else format(Decimal(value).quantize(PLACES), "f")


def _default(settings: Settings) -> Decimal | None:
    return Decimal(settings.llm_daily_budget_usd).quantize(PLACES) if settings.llm_daily_budget_usd else None


def _in_force(own: Any, settings: Settings) -> Decimal | None:
    return Decimal(own).quantize(PLACES) if own is not None else _default(settings)


def budget_dict(workspace: Workspace, settings: Settings) -> dict[str, Any]:
    """The budget (own, default, in force), today's spend and what remains, as plain data.

    ``spent_today_usd`` is what the budget check counts: today's (UTC) known costs plus the
    estimates of calls whose cost is not known (running, timed out, abandoned).
    ``remaining_usd`` is null when there is no limit, and never below zero.
    """
    own = workspace.llm_daily_budget_usd
    budget = _in_force(own, settings)
    spent = spent_today(workspace.id)
    return {
        "workspace": workspace.slug,
        "budget_usd": _usd(own),
        "default_usd": _usd(_default(settings)),
        "effective_usd": _usd(budget),
        "source": "workspace" if own is not None else ("default" if budget is not None else "none"),
        "spent_today_usd": _usd(spent),
        "remaining_usd": None if budget is None else _usd(max(budget - spent, Decimal(0))),
        "day_started_at": stamp(today_start()),
    }


def read_budget(actor: Principal, settings: Settings) -> dict[str, Any]:
    """The caller's workspace's budget and today's spend (``GET /llm-budget``)."""
    actor.require("workspace:read")
    return budget_dict(Workspace.get_by_id(actor.workspace_id), settings)


def set_budget(actor: Principal, value: Any, settings: Settings, *, slug: str | None = None) -> Workspace:
    """Set a workspace's daily LLM budget (None: the deployment's default), audited.

    Parameters:
        actor: the CLI operator (any workspace, named by ``slug``; raise or lower), or an API
            caller with ``workspace:write`` on its own workspace (lower only).
        value: USD as a decimal string or number, or None.
        settings: the deployment's default budget.
        slug: the workspace, for the operator.

    Raises:
        InvalidInput: a bad amount (named ``llm_daily_budget_usd``), nothing written.
        Forbidden: an API caller without the permission, or raising its budget.
        NotFound: no such workspace.
    """
    amount = parse_budget(value)
    operator = actor.via == "cli" and actor.workspace_id is None
    if not operator:
        actor.require(PERMISSION)
    with database.atomic():
        query = Workspace.select().where(
            (Workspace.slug == slug) if operator else (Workspace.id == actor.workspace_id))
        workspace = (query.for_update() if is_postgres() else query).first()
        if workspace is None:
            raise NotFound(f"workspace {slug!r} does not exist")
        before = workspace.llm_daily_budget_usd
        if not operator:
            current, wanted = _in_force(before, settings), _in_force(amount, settings)
            if current is not None and (wanted is None or wanted > current):
                raise Forbidden(f"{FIELD}: a workspace may only lower its daily LLM budget (now "
                                f"{_usd(current)} USD); raising it is the operator's "
                                "(shiftflow quotas set --llm-daily-budget-usd)")
        workspace.llm_daily_budget_usd = amount
        workspace.save(only=[Workspace.llm_daily_budget_usd])
        audit.record(actor, "workspace.llm_budget_set", "workspace", workspace.id,
                     before={FIELD: _usd(before)}, after={FIELD: _usd(amount)}, workspace_id=workspace.id)
    return workspace
