"""Seed 000 (ShiftFlow crypto workflows, docs/seed-mapping.md): its ``conditions``/``actions``
arrays as a definition.

A seed workflow row looks like::

    {"name": "ETH dip buyer", "maxExecutions": 3, "status": "ACTIVE",
     "conditions": [{"type": "price_threshold", "coinId": "ethereum", "operator": "below", "value": 3000}],
     "actions": [{"type": "sideshift_swap", "depositCoin": "eth", "settleCoin": "btc", "amount": "0.1",
                  "settleAddress": "bc1q..."}]}

``convert`` turns it into a ShiftFlow definition: one ``price`` step per coin the
conditions watch, one ``condition`` step (every condition must hold), then one
``sideshift_swap`` step per action, in order. ``maxExecutions`` becomes
``max_executions`` (the engine counts every admitted execution against it, including
those whose condition did not hold). Pure: no I/O; the result is validated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.definition import validate
from shiftflow.kernel.errors import DefinitionError

#: Seed operators and the condition step's operators.
OPERATORS = {
    "below": "below",
    "above": "above",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "equals": "==",
    "eq": "==",
    "==": "==",
}
#: Seed action fields and the swap step's inputs.
SWAP_FIELDS = {
    "depositCoin": "deposit_coin",
    "depositNetwork": "deposit_network",
    "settleCoin": "settle_coin",
    "settleNetwork": "settle_network",
    "amount": "amount",
    "depositAmount": "deposit_amount",
    "settleAmount": "settle_amount",
    "settleAddress": "settle_address",
    "settleMemo": "settle_memo",
    "refundAddress": "refund_address",
    "refundMemo": "refund_memo",
    "shiftType": "type",
    "type": None,
}
DEFAULT_CRON = "*/5 * * * *"


def _step_id(prefix: str, text: str) -> str:
    return (prefix + re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_"))[:100]


def _price_steps(conditions: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(conditions, list):
        raise DefinitionError("conditions: must be a list")
    prices: dict[tuple[str, str], str] = {}
    steps: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for index, cond in enumerate(conditions):
        where = f"conditions[{index}]"
        if not isinstance(cond, Mapping):
            raise DefinitionError(f"{where}: must be an object")
        if cond.get("type") != "price_threshold":
            raise DefinitionError(
                f"{where}.type: unsupported condition type {cond.get('type')!r} (supported: price_threshold)"
            )
        coin = cond.get("coinId")
        if not isinstance(coin, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,99}", coin):
            raise DefinitionError(f"{where}.coinId: must be a CoinGecko id such as 'ethereum'")
        op = OPERATORS.get(str(cond.get("operator", "")).lower())
        if op is None:
            raise DefinitionError(f"{where}.operator: must be one of {', '.join(OPERATORS)}")
        value = cond.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
            raise DefinitionError(f"{where}.value: must be a number")
        currency = str(cond.get("vsCurrency", "usd")).lower()
        key = (coin, currency)
        if key not in prices:
            prices[key] = _step_id("price_", coin if currency == "usd" else f"{coin}_{currency}")
            steps.append(
                {
                    "id": prices[key],
                    "type": "price",
                    "with": {"coin": coin, "vs_currency": currency},
                    "needs": [],
                }
            )
        checks.append({"left": f"{{{{ steps.{prices[key]}.output.price }}}}", "op": op, "right": value})
    return steps, checks


def _swap_step(index: int, action: Any, overrides: Mapping[str, str | None]) -> dict[str, Any]:
    where = f"actions[{index}]"
    if not isinstance(action, Mapping):
        raise DefinitionError(f"{where}: must be an object")
    if action.get("type") != "sideshift_swap":
        raise DefinitionError(
            f"{where}.type: unsupported action type {action.get('type')!r} (supported: sideshift_swap)"
        )
    inputs: dict[str, Any] = {}
    for key, value in action.items():
        if key not in SWAP_FIELDS:
            raise DefinitionError(f"{where}.{key}: unknown field (expected {', '.join(sorted(SWAP_FIELDS))})")
        target = SWAP_FIELDS[key]
        if target is not None and value not in (None, ""):
            inputs[target] = value
    for target in ("settle_address", "refund_address"):
        if overrides.get(target):
            inputs[target] = overrides[target]
    for field, target in (
        ("depositCoin", "deposit_coin"),
        ("settleCoin", "settle_coin"),
        ("settleAddress", "settle_address"),
    ):
        if not inputs.get(target):
            hint = " (or give a settle address to the import command)" if field == "settleAddress" else ""
            raise DefinitionError(f"{where}.{field}: required{hint}")
    inputs.setdefault("type", overrides.get("type") or "fixed")
    if inputs["type"] not in ("fixed", "variable"):
        raise DefinitionError(f"{where}.shiftType: must be fixed or variable")
    if inputs["type"] == "fixed" and not (
        inputs.get("amount") or inputs.get("deposit_amount") or inputs.get("settle_amount")
    ):
        raise DefinitionError(f"{where}.amount: required for a fixed swap")
    return {"id": f"swap_{index + 1}" if index else "swap", "type": "sideshift_swap", "with": inputs}


def convert(
    seed: Mapping[str, Any],
    *,
    settle_address: str | None = None,
    refund_address: str | None = None,
    swap_type: str | None = None,
    cron: str | None = DEFAULT_CRON,
    name: str | None = None,
) -> dict[str, Any]:
    """Build a validated ShiftFlow definition from one seed 000 workflow.

    Parameters:
        seed: the seed row (``name``, ``description``, ``conditions``, ``actions``, ``maxExecutions``).
        settle_address, refund_address: override (or supply) the actions' addresses.
        swap_type: ``fixed`` or ``variable`` for actions that do not say.
        cron: the schedule checking the conditions (the seed app polled prices); None
            makes a manually triggered workflow.
        name: override the workflow name.

    Returns:
        The definition (a plain dict, ready for ``apply_definition``).

    Raises:
        DefinitionError: a field the seed gets wrong, named by its path (``actions[0].settleAddress: required``).
    """
    if not isinstance(seed, Mapping):
        raise DefinitionError("(root): a seed 000 workflow must be an object with conditions and actions")
    title = name or seed.get("name")
    if not isinstance(title, str) or not title.strip():
        raise DefinitionError("name: required")
    actions = seed.get("actions")
    if not isinstance(actions, list) or not actions:
        raise DefinitionError("actions: must be a non-empty list")
    price_steps, checks = _price_steps(seed.get("conditions") or [])
    steps: list[dict[str, Any]] = list(price_steps)
    previous: list[str] = [s["id"] for s in price_steps]
    if checks:
        steps.append(
            {
                "id": "conditions",
                "type": "condition",
                "needs": previous,
                "with": checks[0] if len(checks) == 1 else {"all": checks},
            }
        )
        previous = ["conditions"]
    overrides = {"settle_address": settle_address, "refund_address": refund_address, "type": swap_type}
    for index, action in enumerate(actions):
        step = _swap_step(index, action, overrides)
        step["needs"] = previous
        steps.append(step)
        previous = [step["id"]]
    definition: dict[str, Any] = {
        "name": title.strip()[:200],
        "trigger": {"type": "schedule", "cron": cron, "overlap": "skip"} if cron else {"type": "manual"},
        "steps": steps,
    }
    if isinstance(seed.get("description"), str):
        definition["description"] = seed["description"]
    limit = seed.get("maxExecutions", seed.get("max_executions"))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DefinitionError("maxExecutions: must be a whole number >= 1")
        definition["max_executions"] = limit
    validate(definition)
    return definition


def active(seed: Mapping[str, Any]) -> bool:
    """True unless the seed row says DRAFT, PAUSED, ARCHIVED, COMPLETED or FAILED."""
    return str(seed.get("status", "ACTIVE")).upper() == "ACTIVE"
