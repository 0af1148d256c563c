"""Business metrics: executions and steps by workflow, retries, dead letters, tool calls,
LLM tokens and cost, SideShift volume and fees.

Every label set is fixed and bounded; no execution id, no secret, no free text:

* ``workflow`` is ``<workspace slug>/<workflow name>``, resolved once per workflow id by
  the resolver the worker installs (``consumers.boot``). A process gives its own label
  to the first ``MAX_WORKFLOW_LABELS`` workflows it sees and counts every later one as
  ``other`` (``BoundedLabels``), so a tenant creating thousands of workflows costs at most
  that many series per metric and process. Without a resolver (a test, a tool) it is
  ``other``.
* ``step_type``, ``outcome``, ``queue`` and ``direction`` come from fixed vocabularies.
* ``tool`` is a registered tool's name and ``model`` the model that answered; both are
  bounded the same way (``MAX_TOOL_LABELS``, ``MAX_MODEL_LABELS``) since plugins and
  providers name them.

The engine's own per-message metrics (messages, executions and steps by outcome) stay in
``kernel.metrics``; queue depth and the oldest message's age come from the queue exporter
(``consumers.queue_exporter``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Histogram

#: Workflows a process labels by name; the rest are ``other``.
MAX_WORKFLOW_LABELS = 100
#: Tools and models a process labels by name; the rest are ``other``.
MAX_TOOL_LABELS = 60
MAX_MODEL_LABELS = 40
#: The label of everything past a bound (and of a workflow no resolver could name).
OTHER = "other"
#: A budget check whose spend plus estimate passes this share of the budget is ``near_limit``.
BUDGET_NEAR_RATIO = Decimal("0.8")

_DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class BoundedLabels:
    """Label values for keys, at most ``limit`` distinct ones; later keys get ``other``.

    ``resolve`` turns a key into its label (``None``: unknown, ``other``); it runs once per
    key, and its answers are kept, so the label of a key never changes in a process.
    """

    def __init__(self, limit: int, resolve: Callable[[Any], str | None] | None = None) -> None:
        self.limit = limit
        self.resolve = resolve
        self._labels: dict[Any, str] = {}
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def label(self, key: Any) -> str:
        """The label of ``key``."""
        known = self._labels.get(key)
        if known is not None:
            return known
        try:
            name = (self.resolve(key) if self.resolve is not None else str(key)) or OTHER
        except Exception:  # noqa: BLE001 - a metric label is never worth failing a step for
            return OTHER
        with self._lock:
            if name not in self._named and len(self._named) >= self.limit:
                name = OTHER
            self._named.add(name)
            if len(self._labels) < 10 * self.limit:  # the key cache is bounded too
                self._labels[key] = name
        return name


#: Workflow id -> ``workspace/workflow``; ``consumers.boot`` installs the resolver.
WORKFLOWS = BoundedLabels(MAX_WORKFLOW_LABELS, resolve=lambda key: None)
TOOLS = BoundedLabels(MAX_TOOL_LABELS)
MODELS = BoundedLabels(MAX_MODEL_LABELS)

WORKFLOW_EXECUTIONS = Counter(
    "shiftflow_workflow_executions_total",
    "Executions by workflow (workspace/workflow, bounded) and transition (created, succeeded, failed, cancelled).",
    ["workflow", "outcome"],
)
WORKFLOW_EXECUTION_SECONDS = Histogram(
    "shiftflow_workflow_execution_seconds",
    "Run time of a finished execution (its start to its final state), by workflow (bounded).",
    ["workflow"],
    buckets=_DURATION_BUCKETS,
)
WORKFLOW_STEPS = Counter(
    "shiftflow_workflow_steps_total",
    "Step outcomes by workflow (bounded) and outcome (succeeded, failed, waiting, ...).",
    ["workflow", "outcome"],
)
STEP_SECONDS = Histogram(
    "shiftflow_step_duration_seconds",
    "Run time of one step attempt, by step type and outcome.",
    ["step_type", "outcome"],
    buckets=_DURATION_BUCKETS,
)
STEP_RETRIES = Counter(
    "shiftflow_step_retries_total",
    "Step attempts that failed with a transient error and were scheduled again, by step type.",
    ["step_type"],
)
DEAD_LETTERS = Counter(
    "shiftflow_dead_letters_total",
    "Messages the workers gave up on (recorded as dead letters), by queue.",
    ["queue"],
)
TOOL_CALLS = Counter(
    "shiftflow_tool_calls_total",
    "Tool calls by tool (bounded) and outcome (ok, invalid, permanent, transient, error).",
    ["tool", "outcome"],
)
TOOL_SECONDS = Histogram(
    "shiftflow_tool_call_duration_seconds",
    "Duration of one tool call, by tool (bounded).",
    ["tool"],
    buckets=_DURATION_BUCKETS,
)
RATE_LIMIT_PARKS = Counter(
    "shiftflow_rate_limit_parks_total",
    "Steps parked with a durable timer because the other side answered 429/503 with Retry-After, by tool (bounded).",
    ["tool"],
)
RATE_LIMIT_PARK_SECONDS = Counter(
    "shiftflow_rate_limit_park_seconds_total",
    "Seconds of those parks (what the other sides asked for, bounded per park), by tool (bounded).",
    ["tool"],
)
LLM_CALLS = Counter(
    "shiftflow_llm_calls_total",
    "LLM calls by the model asked for or that answered (bounded) and outcome (ok, error).",
    ["model", "outcome"],
)
LLM_TOKENS = Counter(
    "shiftflow_llm_tokens_total",
    "LLM tokens billed, by model (bounded) and direction (input, output).",
    ["model", "direction"],
)
LLM_COST = Counter(
    "shiftflow_llm_cost_usd_total",
    "What LLM calls cost in USD by the price table (SHIFTFLOW_LLM_PRICES_FILE), by model (bounded).",
    ["model"],
)
LLM_BUDGET_CHECKS = Counter(
    "shiftflow_llm_budget_checks_total",
    "Daily budget checks before an LLM call: ok, near_limit (spent + estimate above 80 % of "
    "the budget, allowed) or refused.",
    ["result"],
)
SIDESHIFT_ORDERS = Counter(
    "shiftflow_sideshift_orders_finished_total",
    "SideShift orders that reached a final state (SETTLED, REFUNDED, EXPIRED, FAILED).",
    ["state"],
)
SIDESHIFT_LIMIT_WAITS = Counter(
    "shiftflow_sideshift_rate_limit_waits_total",
    "Calls SideShift's client-side limiter held: waited (for a free slot) or refused (none within "
    "its max wait; the step retries later), by kind (shifts, quotes).",
    ["kind", "result"],
)
SIDESHIFT_LIMIT_WAIT_SECONDS = Counter(
    "shiftflow_sideshift_rate_limit_wait_seconds_total",
    "Seconds SideShift's client-side limiter made callers wait, by kind.",
    ["kind"],
)
SIDESHIFT_VOLUME = Counter("shiftflow_sideshift_volume_usd_total",
                           "USD value of settled SideShift orders (deposit side, last cached prices).")
SIDESHIFT_FEES = Counter("shiftflow_sideshift_fees_usd_total", "USD fees of settled SideShift orders.")

for _result in ("ok", "near_limit", "refused"):
    LLM_BUDGET_CHECKS.labels(_result)
for _state in ("SETTLED", "REFUNDED", "EXPIRED", "FAILED"):
    SIDESHIFT_ORDERS.labels(_state)


def execution_event(workflow_id: Any, outcome: str, seconds: float | None = None) -> None:
    """Count an execution transition of ``workflow_id``; ``seconds``: its trigger-to-final time."""
    label = WORKFLOWS.label(workflow_id)
    WORKFLOW_EXECUTIONS.labels(label, outcome).inc()
    if seconds is not None:
        WORKFLOW_EXECUTION_SECONDS.labels(label).observe(max(0.0, seconds))


def step_event(workflow_id: Any, step_type: str, outcome: str, milliseconds: int | None = None) -> None:
    """Count a step outcome of ``workflow_id``; ``milliseconds``: the attempt's run time, when known."""
    WORKFLOW_STEPS.labels(WORKFLOWS.label(workflow_id), outcome).inc()
    if milliseconds is not None:
        STEP_SECONDS.labels(step_type, outcome).observe(max(0.0, milliseconds / 1000))


def tool_call(tool: str, outcome: str, seconds: float) -> None:
    """Count one tool call and its duration."""
    label = TOOLS.label(tool)
    TOOL_CALLS.labels(label, outcome).inc()
    TOOL_SECONDS.labels(label).observe(max(0.0, seconds))


def rate_limit_park(tool: str, seconds: float) -> None:
    """Count one step parked for ``seconds`` because ``tool``'s service asked us to wait."""
    label = TOOLS.label(tool)
    RATE_LIMIT_PARKS.labels(label).inc()
    RATE_LIMIT_PARK_SECONDS.labels(label).inc(max(0.0, seconds))


def llm_usage(model: str, tokens_in: int, tokens_out: int, cost: Decimal | None) -> None:
    """Count an LLM call's tokens and cost (``cost`` None: the model has no price)."""
    label = MODELS.label(model)
    LLM_CALLS.labels(label, "ok").inc()
    LLM_TOKENS.labels(label, "input").inc(max(0, tokens_in))
    LLM_TOKENS.labels(label, "output").inc(max(0, tokens_out))
    if cost is not None:
        LLM_COST.labels(label).inc(float(cost))


def llm_failed(model: str) -> None:
    """Count an LLM call that raised (refused, unavailable, bad answer)."""
    LLM_CALLS.labels(MODELS.label(model), "error").inc()


def budget_check(spent: Decimal, estimate: Decimal, budget: Decimal | None, allowed: bool) -> None:
    """Count a budget check: refused, near its limit, or ok."""
    if not allowed:
        result = "refused"
    elif budget is not None and spent + estimate > budget * BUDGET_NEAR_RATIO:
        result = "near_limit"
    else:
        result = "ok"
    LLM_BUDGET_CHECKS.labels(result).inc()


def order_finished(state: str, volume_usd: Decimal | None = None, fees_usd: Decimal | None = None) -> None:
    """Count a SideShift order reaching a final ``state``, with its volume and fees when settled."""
    SIDESHIFT_ORDERS.labels(state if state in ("SETTLED", "REFUNDED", "EXPIRED", "FAILED") else OTHER).inc()
    if volume_usd:
        SIDESHIFT_VOLUME.inc(float(volume_usd))
    if fees_usd:
        SIDESHIFT_FEES.inc(float(fees_usd))
