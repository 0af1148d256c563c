"""LLM calls: one request/answer shape, clients for OpenAI-compatible Chat Completions and
Anthropic's Messages API over plain HTTP, their errors, model prices and daily budgets.

``docs/llm.md`` describes the providers, the mapping of requests and answers, errors and
rate limits, the price table and budgets, and the local fakes the tests run against.
"""

from shiftflow.kernel.llm.base import DEFAULT_TIMEOUT, ProviderClient
from shiftflow.kernel.llm.budget import budget_allows, check_budget, estimate_cost, estimate_input_tokens
from shiftflow.kernel.llm.client import PROVIDERS, LlmClient, make_client
from shiftflow.kernel.llm.credentials import Credentials
from shiftflow.kernel.llm.errors import (
    BudgetExceeded,
    InvalidCredentials,
    InvalidLlmRequest,
    LlmAuthFailed,
    LlmBadResponse,
    LlmError,
    LlmRateLimited,
    LlmRejected,
    LlmTimeout,
    LlmUnavailable,
    UnknownModelPrice,
)
from shiftflow.kernel.llm.prices import ModelPrice, PriceTable, cost, load_prices, price_table, shipped_prices
from shiftflow.kernel.llm.types import Completion, LlmRequest, Message, ResponseFormat, Tool, ToolCall

__all__ = [
    "DEFAULT_TIMEOUT",
    "PROVIDERS",
    "BudgetExceeded",
    "Completion",
    "Credentials",
    "InvalidCredentials",
    "InvalidLlmRequest",
    "LlmAuthFailed",
    "LlmBadResponse",
    "LlmClient",
    "LlmError",
    "LlmRateLimited",
    "LlmRejected",
    "LlmRequest",
    "LlmTimeout",
    "LlmUnavailable",
    "Message",
    "ModelPrice",
    "PriceTable",
    "ProviderClient",
    "ResponseFormat",
    "Tool",
    "ToolCall",
    "UnknownModelPrice",
    "budget_allows",
    "check_budget",
    "cost",
    "estimate_cost",
    "estimate_input_tokens",
    "load_prices",
    "make_client",
    "price_table",
    "shipped_prices",
]
