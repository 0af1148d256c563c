"""Daily LLM budgets: may a workspace make one more call today?

Pure functions for the engine to call before each call: it sums what the workspace's
calls cost today (UTC) and estimates the most this call may cost; the call is allowed
only if both together stay within the budget. The estimate counts the request's input
at about four characters per token (an estimate: the provider's tokenizer decides) and
the whole ``max_tokens`` as output (a true upper bound), so a call that would cross the
limit is refused before it is made, not noticed after.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

from shiftflow.kernel import observe
from shiftflow.kernel.llm.errors import BudgetExceeded
from shiftflow.kernel.llm.prices import MICRO, PriceTable
from shiftflow.kernel.llm.types import LlmRequest

#: Characters per token assumed by ``estimate_input_tokens`` (English text averages about 4).
CHARS_PER_TOKEN = 4
#: Tokens added per message for the roles and separators the provider adds.
TOKENS_PER_MESSAGE = 4


def _money(value: Decimal | int, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name}: expected a Decimal (money is never a float), got {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name}: {value!r} is not an amount of at least 0")
    return amount


def budget_allows(spent_today: Decimal, estimate: Decimal, budget: Decimal | None) -> bool:
    """Whether a call estimated at ``estimate`` fits in ``budget`` after ``spent_today``.

    Parameters:
        spent_today: what the workspace's LLM calls cost today (UTC), USD.
        estimate: the most this call may cost, USD (``estimate_cost``).
        budget: the daily limit, USD; None means no limit. A limit of 0 allows only free calls.

    Raises:
        TypeError: an amount is a float (money is Decimal).
        ValueError: an amount is negative or not finite.
    """
    spent = _money(spent_today, "spent_today")
    cost = _money(estimate, "estimate")
    if budget is None:
        return True
    return spent + cost <= _money(budget, "budget")


def check_budget(
    spent_today: Decimal, estimate: Decimal, budget: Decimal | None, *, workspace: str | None = None
) -> None:
    """Refuse a call that ``budget_allows`` would not allow.

    Raises:
        BudgetExceeded: naming the limit, what was spent today and the call's estimate.
    """
    allowed = budget_allows(spent_today, estimate, budget)
    observe.budget_check(Decimal(spent_today), Decimal(estimate), budget, allowed)
    if allowed:
        return
    assert budget is not None
    who = f"of workspace {workspace!r} " if workspace else ""

    def usd(amount: Decimal) -> str:
        return f"{Decimal(amount).quantize(MICRO)} USD"

    raise BudgetExceeded(
        f"daily LLM budget {who}is {usd(budget)}: {usd(spent_today)} spent today (UTC) and this call "
        f"may cost up to {usd(estimate)}; the budget resets at 00:00 UTC",
        budget=Decimal(budget),
        spent=Decimal(spent_today),
        estimate=Decimal(estimate),
        workspace=workspace,
    )


def estimate_input_tokens(request: LlmRequest) -> int:
    """About how many input tokens ``request`` has (system, messages, tool calls and tool schemas)."""
    chars = len(request.system or "")
    for message in request.messages:
        chars += len(message.content)
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments_text)
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description) + len(json.dumps(dict(tool.parameters)))
    if request.response_format is not None and request.response_format.schema is not None:
        chars += len(json.dumps(dict(request.response_format.schema)))
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * (len(request.messages) + 1)


def estimate_cost(request: LlmRequest, table: PriceTable) -> Decimal:
    """The most ``request`` may cost: estimated input tokens, and ``max_tokens`` of output.

    Raises:
        UnknownModelPrice: the model has no price (so no budget can hold it).
    """
    return table.price(request.model).cost(estimate_input_tokens(request), request.max_tokens)
