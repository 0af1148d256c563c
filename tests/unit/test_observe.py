"""The business metrics' labels stay bounded, and their helpers count what they say."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import REGISTRY

from shiftflow.kernel import observe


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_bounded_labels_name_the_first_keys_and_call_the_rest_other() -> None:
    names = {f"id-{n}": f"ws/flow-{n}" for n in range(5)}
    labels = observe.BoundedLabels(3, resolve=names.get)
    assert [labels.label(f"id-{n}") for n in range(5)] == ["ws/flow-0", "ws/flow-1", "ws/flow-2", "other", "other"]
    assert labels.label("id-1") == "ws/flow-1"  # a named key keeps its label
    assert labels.label("missing") == "other"  # the resolver knows nothing of it


def test_a_resolver_that_raises_gives_other() -> None:
    def broken(key: object) -> str:
        raise RuntimeError("database down")

    assert observe.BoundedLabels(3, resolve=broken).label("x") == "other"


def test_two_keys_with_one_name_share_a_label_and_a_slot() -> None:
    labels = observe.BoundedLabels(1, resolve=lambda key: "ws/same")
    assert labels.label("a") == labels.label("b") == "ws/same"


def test_budget_checks_by_result() -> None:
    before = {r: _value("shiftflow_llm_budget_checks_total", result=r) for r in ("ok", "near_limit", "refused")}
    observe.budget_check(Decimal("1"), Decimal("1"), Decimal("10"), True)
    observe.budget_check(Decimal("8"), Decimal("1"), Decimal("10"), True)
    observe.budget_check(Decimal("9"), Decimal("2"), Decimal("10"), False)
    observe.budget_check(Decimal("9"), Decimal("2"), None, True)
    after = {r: _value("shiftflow_llm_budget_checks_total", result=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {"ok": 2, "near_limit": 1, "refused": 1}


def test_llm_usage_counts_tokens_and_cost_by_model() -> None:
    observe.llm_usage("test-model-obs", 120, 30, Decimal("0.0015"))
    assert _value("shiftflow_llm_tokens_total", model="test-model-obs", direction="input") == 120
    assert _value("shiftflow_llm_tokens_total", model="test-model-obs", direction="output") == 30
    assert abs(_value("shiftflow_llm_cost_usd_total", model="test-model-obs") - 0.0015) < 1e-9


def test_a_settled_order_adds_volume_and_fees() -> None:
    volume, fees = _value("shiftflow_sideshift_volume_usd_total"), _value("shiftflow_sideshift_fees_usd_total")
    settled = _value("shiftflow_sideshift_orders_finished_total", state="SETTLED")
    observe.order_finished("SETTLED", Decimal("100.50"), Decimal("1.25"))
    observe.order_finished("EXPIRED")
    assert _value("shiftflow_sideshift_volume_usd_total") - volume == 100.5
    assert _value("shiftflow_sideshift_fees_usd_total") - fees == 1.25
    assert _value("shiftflow_sideshift_orders_finished_total", state="SETTLED") - settled == 1


def test_an_http_step_call_is_counted_by_tool_and_outcome() -> None:
    """A refused call (a private address, not allowed here) counts as a permanent failure."""
    import pytest

    from shiftflow.kernel.definition import validate
    from shiftflow.kernel.errors import PermanentError
    from shiftflow.kernel.executors import call_tool
    from shiftflow.kernel.settings import Settings

    definition = validate({"name": "t", "trigger": {"type": "manual"},
                           "steps": [{"id": "h", "type": "http", "with": {"url": "http://127.0.0.1:9/x"}}]})
    step = definition.step("h")
    before = _value("shiftflow_tool_calls_total", tool="http", outcome="permanent")
    count = _value("shiftflow_tool_call_duration_seconds_count", tool="http")
    with pytest.raises(PermanentError):
        call_tool(step, {"url": "http://127.0.0.1:9/x", "method": "GET"}, Settings(http_allow_private=False))
    assert _value("shiftflow_tool_calls_total", tool="http", outcome="permanent") - before == 1
    assert _value("shiftflow_tool_call_duration_seconds_count", tool="http") - count == 1


def test_sideshifts_limiter_counts_its_waits_and_refusals() -> None:
    import pytest

    from shiftflow.kernel.sideshift.errors import RateLimited
    from shiftflow.kernel.sideshift.ratelimit import SHIFTS, InProcessBackend, Rate, RateLimiter

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(InProcessBackend(clock=lambda: now[0]), {SHIFTS: Rate(1, 10.0)}, max_wait=15,
                          sleep=sleep, clock=lambda: now[0])
    waited = _value("shiftflow_sideshift_rate_limit_waits_total", kind=SHIFTS, result="waited")
    refused = _value("shiftflow_sideshift_rate_limit_waits_total", kind=SHIFTS, result="refused")
    limiter.acquire(SHIFTS)
    limiter.acquire(SHIFTS)  # waits 10 s for the slot
    limiter.max_wait = 1
    with pytest.raises(RateLimited):
        limiter.acquire(SHIFTS)
    assert slept == [10.0]
    assert _value("shiftflow_sideshift_rate_limit_waits_total", kind=SHIFTS, result="waited") - waited == 1
    assert _value("shiftflow_sideshift_rate_limit_waits_total", kind=SHIFTS, result="refused") - refused == 1
