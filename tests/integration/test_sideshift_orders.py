"""SideShift swap steps and price steps on real services, against the fakes over real HTTP.

Real RabbitMQ (own vhost), PostgreSQL (own database), Redis (the shared rate limiter), a
Dramatiq worker and the timer loop in this process; the fake SideShift (uvicorn) and the
fake price API on 127.0.0.1. The fake SideShift's clock moves only with ``fake.advance``,
so a shift settles exactly when a test says so; the workers poll every 0.1-0.4 s.

Where SideShift's documentation is silent the fake can answer either way
(``FakeBehaviour``); a test picks the answer with ``@pytest.mark.parametrize("rig", [...],
indirect=True)``. The money tests run both with a fake that refuses a reused quote and
with one that accepts it: one shift per order must never depend on SideShift refusing.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import yaml

from shiftflow.cli.main import main
from shiftflow.consumers import timers
from shiftflow.consumers.boot import boot
from shiftflow.fakes.prices import FakePriceServer
from shiftflow.fakes.sideshift import FakeBehaviour, FakeSideShift, FakeSideShiftServer
from shiftflow.kernel.contracts import StepPayload, TriggerPayload
from shiftflow.kernel.enqueue import send, send_all
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import catalog, control, queries
from shiftflow.models.manage.access import Principal
from shiftflow.models.swaps import order_ops, order_status, pricing
from shiftflow.models.swaps.orders import ReconcileError
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.notifications import Notification
from shiftflow.models.tables.price_cache import PriceCache
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.sideshift_orders import SideShiftOrder
from shiftflow.models.tables.tenancy import User
from shiftflow.models.tables.workflow_metrics import WorkflowMetrics
from shiftflow.models.tables.workflows import Workflow
from tests.support.message_tally import MessageTally
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
BTC = "bc1q" + "q" * 38
ETH = "0x" + "12" * 20
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclasses.dataclass
class Rig:
    fake: FakeSideShift
    prices: FakePriceServer
    env: dict[str, str]
    user: User
    tally: MessageTally

    def workflow(self, definition: dict[str, Any]) -> Workflow:
        workflow = catalog.apply_definition(catalog.ensure_workspace("crypto"), definition).workflow
        Workflow.update(created_by=self.user.id).where(Workflow.id == workflow.id).execute()
        return workflow

    def trigger(self, workflow: Workflow, key: str, data: dict[str, Any] | None = None) -> str:
        """Publish a manual trigger; return its message id (for ``tally.handled``)."""
        return send(
            "triggers.start",
            TriggerPayload(str(workflow.id), key, "manual", data or {}, received_at=time.time()),
        )

    def finished(self, key: str, timeout: float = 30) -> Execution:
        def done() -> Execution | None:
            row = Execution.get_or_none(Execution.dedup_key == key)
            return row if row is not None and row.status in FINAL else None

        return wait_until(done, timeout=timeout)

    def order(self, key: str, state: str, timeout: float = 30) -> SideShiftOrder:
        def found() -> SideShiftOrder | None:
            execution = Execution.get_or_none(Execution.dedup_key == key)
            if execution is None:
                return None
            return SideShiftOrder.get_or_none(
                (SideShiftOrder.execution == execution.id) & (SideShiftOrder.state == state)
            )

        try:
            return wait_until(found, timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"no {state} order for {key}: {self.describe(key)}") from exc

    def describe(self, key: str) -> str:
        execution = Execution.get_or_none(Execution.dedup_key == key)
        if execution is None:
            return "no execution"
        detail = queries.detail_dict(execution)
        orders = [
            (o.state, o.error)
            for o in SideShiftOrder.select().where(SideShiftOrder.execution == execution.id)
        ]
        return f"{detail['status']} {detail['error']} steps={detail['steps']} orders={orders}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SHIFTFLOW, "sideshift", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )


#: The fake's two answers to a reused quote, for the money tests.
BOTH_QUOTE_ANSWERS = pytest.mark.parametrize(
    "rig", [{"reused_quote": "refuse"}, {"reused_quote": "accept"}], indirect=True, ids=["refuse", "accept"]
)


@pytest.fixture
def rig(real_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Rig]:
    fake = FakeSideShift(enforce_rate_limits=False, behaviour=FakeBehaviour(**getattr(request, "param", {})))
    server = FakeSideShiftServer(fake).start()
    prices = FakePriceServer({"ethereum": "2500", "bitcoin": "50000"}).start()
    env = {
        **real_env,
        "SHIFTFLOW_SIDESHIFT_BASE_URL": server.base_url,
        "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID": fake.affiliate_id,
        "SHIFTFLOW_PRICE_API_URL": prices.url,
        "SHIFTFLOW_SIDESHIFT_POLL_SECONDS": "0.1",
        "SHIFTFLOW_SIDESHIFT_POLL_MAX_SECONDS": "0.4",
        "SHIFTFLOW_SIDESHIFT_SHIFTS_PER_MINUTE": "1000",
        "SHIFTFLOW_SIDESHIFT_QUOTES_PER_MINUTE": "1000",
        "SHIFTFLOW_SIDESHIFT_TIMEOUT_SECONDS": "2",
        "SHIFTFLOW_SIDESHIFT_RATE_LIMIT_BACKOFF_SECONDS": "2",
        "SHIFTFLOW_SIDESHIFT_COMMISSION_RATE": "0.01",
    }
    settings = configure(Settings.from_env(env))
    broker = boot(settings)
    tally = MessageTally()
    broker.add_middleware(tally)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    stop = threading.Event()
    loop = threading.Thread(target=timers.run_loop, args=(stop, 0.05), daemon=True)
    loop.start()
    user = User.create(email="trader@example.com", name="Trader")
    try:
        yield Rig(fake, prices, env, user, tally)
    finally:
        stop.set()
        loop.join(5)
        worker.stop()
        broker.emit_before("worker_shutdown", worker)
        broker.close()
        prices.stop()
        server.stop()


def swap_workflow(name: str, **with_: Any) -> dict[str, Any]:
    inputs = {
        "type": "fixed",
        "deposit_coin": "eth",
        "deposit_network": "ethereum",
        "settle_coin": "btc",
        "settle_network": "bitcoin",
        "amount": "0.1",
        "settle_address": BTC,
        "refund_address": ETH,
        **with_,
    }
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "swap", "type": "sideshift_swap", "retry": {"max": 3, "backoff": 0.2}, "with": inputs}
        ],
    }


def settle(rig: Rig, order: SideShiftOrder) -> None:
    """Fund the shift with exactly its amount and let the fake clock run until it settles."""
    rig.fake.deposit(order.shift_id, order.deposit_amount)
    rig.fake.advance(600)


# -- the seed 000 example, end to end -----------------------------------------------------------


@BOTH_QUOTE_ANSWERS
def test_dca_example_runs_to_settled_and_respects_max_executions(rig: Rig) -> None:
    definition = yaml.safe_load(resources.files("shiftflow.examples").joinpath("dca.yaml").read_text())
    definition.update(trigger={"type": "manual"}, max_executions=2)
    definition["vars"].update(settle_address=BTC, refund_address=ETH)
    workflow = rig.workflow(definition)
    from prometheus_client import REGISTRY

    def counted(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    volume_before = counted("shiftflow_sideshift_volume_usd_total")
    settled_before = counted("shiftflow_sideshift_orders_finished_total", state="SETTLED")
    # A cached BTC price lets the fees be valued too (deposit value minus settlement value).
    pricing.get_price(pricing.PriceRequest.parse({"coin": "bitcoin"}), configure(Settings.from_env(rig.env)))
    rig.trigger(workflow, "dip-1")
    first = rig.order("dip-1", "OPEN")
    rig.trigger(workflow, "dip-2")  # within 60 s of the first: its price comes from the cache
    second = rig.order("dip-2", "OPEN")
    # Only now: triggers sent together race for the last slot (4 worker threads), and
    # max_executions admits whichever is created first.
    third = rig.trigger(workflow, "dip-3")
    orders = [first, second]
    for order in orders:
        assert order.shift_type == "fixed" and order.quote_id and order.deposit_address
        assert order.deposit_amount == "0.1" and Decimal(order.settle_amount) > 0
        settle(rig, order)
    done = [rig.finished(key) for key in ("dip-1", "dip-2")]
    assert [e.status for e in done] == ["SUCCEEDED", "SUCCEEDED"], [e.error for e in done]
    wait_until(lambda: rig.tally.handled(third), timeout=30, message="the third trigger handled")
    assert Execution.get_or_none(Execution.dedup_key == "dip-3") is None  # max_executions
    assert Workflow.get_by_id(workflow.id).status == "COMPLETED"
    assert rig.fake.created_total == 2 and rig.fake.double_orders() == {}
    # The price was fetched once and then served from the 60 s cache.
    assert rig.prices.requests == 2  # bitcoin above, ethereum once
    price_steps = (
        StepExecution.select().where(StepExecution.step_id == "price").order_by(StepExecution.created_at)
    )
    assert sorted(s.output["cached"] for s in price_steps) == [False, True]
    assert all(s.output["price"] == "2500" and s.output["source"] == "coingecko" for s in price_steps)
    swap = StepExecution.get((StepExecution.execution == done[0].id) & (StepExecution.step_id == "swap"))
    assert swap.output["status"] == "settled" and swap.output["settle_hash"]
    assert swap.output["external_id"] == f"{done[0].id}:swap:0"
    assert SideShiftOrder.select().where(SideShiftOrder.state == "SETTLED").count() == 2
    assert SideEffect.select().where(SideEffect.state == "DONE").count() == 2
    metrics = WorkflowMetrics.get(WorkflowMetrics.workflow == workflow.id)
    assert (metrics.completed_executions, metrics.successful_executions, metrics.failed_executions) == (
        2,
        2,
        0,
    )
    # Volume: 2 x 0.1 ETH at the cached 2500 USD. Fees: deposit value minus settlement value.
    assert metrics.total_volume_usd == Decimal("500")
    # The same in Prometheus (the worker threads run in this process).
    assert counted("shiftflow_sideshift_volume_usd_total") - volume_before == 500
    assert counted("shiftflow_sideshift_orders_finished_total", state="SETTLED") - settled_before == 2
    settled_usd = sum(Decimal(o.settle_amount) for o in SideShiftOrder.select()) * Decimal("50000")
    assert metrics.total_fees_usd == (Decimal("500") - settled_usd).quantize(Decimal("0.000001"))
    notes = list(Notification.select().where(Notification.user == rig.user.id))
    assert sorted(n.type for n in notes) == ["WORKFLOW_EXECUTED", "WORKFLOW_EXECUTED"]


def test_price_above_threshold_skips_the_swap(rig: Rig) -> None:
    rig.prices.set_price("ethereum", "3100.25")
    definition = yaml.safe_load(resources.files("shiftflow.examples").joinpath("dca.yaml").read_text())
    definition["trigger"] = {"type": "manual"}
    workflow = rig.workflow(definition)
    rig.trigger(workflow, "no-dip")
    execution = rig.finished("no-dip")
    steps = {s.step_id: s for s in StepExecution.select().where(StepExecution.execution == execution.id)}
    assert execution.status == "SUCCEEDED"
    assert steps["price"].output["price"] == "3100.25" and steps["dip"].output == {"passed": False}
    assert steps["swap"].status == "SKIPPED"
    assert SideShiftOrder.select().count() == 0 and rig.fake.created_total == 0


# -- outcomes --------------------------------------------------------------------------------------


def test_refunded_variable_shift_fails_the_step_and_notifies(rig: Rig) -> None:
    workflow = rig.workflow(swap_workflow("var", type="variable", amount=None))
    rig.trigger(workflow, "var-1")
    order = rig.order("var-1", "OPEN")
    assert order.shift_type == "variable" and order.deposit_min and order.deposit_max
    rig.fake.deposit(order.shift_id, Decimal(order.deposit_min) / 10)  # below the minimum: refunded
    rig.fake.advance(600)
    execution = rig.finished("var-1")
    assert execution.status == "FAILED"
    assert "ended refunded" in execution.error
    assert SideShiftOrder.get_by_id(order.id).state == "REFUNDED"
    step = StepExecution.get((StepExecution.execution == execution.id) & (StepExecution.step_id == "swap"))
    assert step.status == "FAILED" and step.output["status"] == "refunded"
    note = Notification.get(Notification.execution == execution.id)
    assert note.type == "WORKFLOW_FAILED" and "refunded" in note.message
    metrics = WorkflowMetrics.get(WorkflowMetrics.workflow == workflow.id)
    assert (metrics.failed_executions, metrics.total_volume_usd) == (1, Decimal(0))


def test_refused_order_fails_without_a_shift_and_bad_input_names_the_field(rig: Rig) -> None:
    refused = rig.workflow(swap_workflow("refused", settle_address="not-a-btc-address"))
    bad = rig.workflow(swap_workflow("bad", amount="-1"))
    rig.trigger(refused, "refused-1")
    rig.trigger(bad, "bad-1")
    execution = rig.finished("refused-1")
    assert execution.status == "FAILED" and "Invalid receiving address" in execution.error
    assert SideShiftOrder.get(SideShiftOrder.execution == execution.id).state == "FAILED"
    assert rig.fake.created_total == 0
    execution = rig.finished("bad-1")
    assert execution.status == "FAILED" and "'amount' must be greater than zero" in execution.error
    assert SideShiftOrder.select().where(SideShiftOrder.execution == execution.id).count() == 0


@BOTH_QUOTE_ANSWERS
def test_rate_limited_create_is_retried_and_creates_one_shift(rig: Rig) -> None:
    rig.fake.fail_next(1, status=429, routes=["shifts_fixed"])
    workflow = rig.workflow(swap_workflow("limited"))
    rig.trigger(workflow, "limited-1")
    order = rig.order("limited-1", "OPEN")
    settle(rig, order)
    assert rig.finished("limited-1").status == "SUCCEEDED"
    assert rig.fake.created_total == 1 and rig.fake.double_orders() == {}
    assert rig.fake.quotes_created == 2  # the retry asked for a new quote; the first one was never used
    assert SideEffect.get(SideEffect.step_id == "swap").attempts == 2


# -- unknown outcomes and the operator -----------------------------------------------------------------


@BOTH_QUOTE_ANSWERS
def test_lost_answer_waits_for_the_operator_who_attaches_the_shift(rig: Rig) -> None:
    rig.fake.drop_next_create()  # the shift is created, the answer never arrives
    workflow = rig.workflow(swap_workflow("lost"))
    rig.trigger(workflow, "lost-1")
    order = rig.order("lost-1", "NEEDS_RECONCILIATION")
    execution = Execution.get(Execution.dedup_key == "lost-1")
    step = StepExecution.get((StepExecution.execution == execution.id) & (StepExecution.step_id == "swap"))
    assert execution.status == "RUNNING" and "needs reconciliation" in execution.error
    assert step.status == "WAITING" and "shiftflow sideshift reconcile" in step.error
    assert SideEffect.get(SideEffect.step_id == "swap").state == "UNKNOWN"
    assert Notification.get(Notification.execution == execution.id).type == "SYSTEM_ALERT"
    # Everything the engine had in motion (retries, re-published steps) has come to rest.
    wait_until(rig.tally.settled, timeout=30, message="no message in flight")
    assert rig.fake.created_total == 1  # and it stays one: nothing re-posts
    listed = rig.cli("orders", "--state", "NEEDS_RECONCILIATION")
    assert listed.returncode == 0 and str(order.id) in listed.stdout, listed.stderr
    (shift,) = [s for s in rig.fake.shifts.values() if s.external_id == order.external_id]
    with pytest.raises(SystemExit) as usage:  # argparse: neither --shift-id nor --none
        main(["sideshift", "reconcile", str(order.id)])
    assert usage.value.code == 2
    with pytest.raises(ReconcileError, match="does not know shift"):
        order_ops.reconcile(order.id, shift_id="0" * 20)
    done = rig.cli("reconcile", str(order.id)[:8], "--shift-id", shift.id, "--by", "ada")
    assert done.returncode == 0 and "polling continues" in done.stdout, done.stderr
    again = rig.cli("reconcile", str(order.id), "--none")
    assert again.returncode == 1 and "only orders in NEEDS_RECONCILIATION" in again.stderr
    settle(rig, SideShiftOrder.get_by_id(order.id))
    execution = rig.finished("lost-1")
    assert execution.status == "SUCCEEDED" and execution.error is None
    assert SideShiftOrder.get_by_id(order.id).state == "SETTLED"
    assert rig.fake.created_total == 1 and rig.fake.double_orders() == {}


@BOTH_QUOTE_ANSWERS
def test_server_error_after_create_and_operator_declares_none(rig: Rig) -> None:
    rig.fake.fail_next(1, status=502, routes=["shifts_fixed"])  # 5xx before the work: nothing created
    workflow = rig.workflow(swap_workflow("none"))
    rig.trigger(workflow, "none-1")
    order = rig.order("none-1", "NEEDS_RECONCILIATION")
    with pytest.raises(PermanentError, match="exactly one"):
        order_ops.reconcile(order.id)
    order_ops.reconcile(order.id, none=True, by="ada")
    execution = rig.finished("none-1")
    assert execution.status == "FAILED" and "no shift was created (declared by ada)" in execution.error
    assert SideShiftOrder.get_by_id(order.id).state == "FAILED"
    assert SideEffect.get(SideEffect.step_id == "swap").state == "FAILED"
    assert rig.fake.created_total == 0


@BOTH_QUOTE_ANSWERS
def test_a_delivery_that_finds_the_create_sent_marks_it_and_never_posts(rig: Rig, monkeypatch) -> None:
    # A failure between "sent" and "recorded" (here a transient error from a failpoint, so
    # the step is retried in-process) leaves the order CREATING; the retry must not post.
    monkeypatch.setenv("SHIFTFLOW_FAILPOINTS", "sideshift.after_create=raise")
    workflow = rig.workflow(swap_workflow("crash"))
    rig.trigger(workflow, "crash-1")
    order = rig.order("crash-1", "NEEDS_RECONCILIATION")
    assert "stopped before recording its answer" in order.error
    assert rig.fake.created_total == 1 and rig.fake.quotes_created == 1


# -- the price step ---------------------------------------------------------------------------------


def test_price_cache_errors_and_output(rig: Rig) -> None:
    settings = configure(Settings.from_env(rig.env))
    request = pricing.PriceRequest.parse({"coin": "bitcoin"})
    first = pricing.get_price(request, settings)
    assert first == {**first, "coin": "bitcoin", "price": "50000", "cached": False, "source": "coingecko"}
    assert pricing.get_price(request, settings)["cached"] is True and rig.prices.requests == 1
    assert PriceCache.get(PriceCache.coin_id == "bitcoin").symbol == "btc"
    rig.prices.set_price("bitcoin", "0.00001234")
    assert (
        pricing.get_price(pricing.PriceRequest.parse({"coin": "bitcoin", "max_age_seconds": 0}), settings)[
            "price"
        ]
        == "0.00001234"
    )
    rig.prices.fail_next(1, 503)
    with pytest.raises(pricing.PriceUnavailable):
        pricing.get_price(pricing.PriceRequest.parse({"coin": "ethereum"}), settings)
    with pytest.raises(pricing.UnknownPrice):
        pricing.get_price(pricing.PriceRequest.parse({"coin": "no-such-coin"}), settings)
    with pytest.raises(pricing.PriceInputError, match="'coin'"):
        pricing.PriceRequest.parse({"coin": "Not A Coin!"})
    assert pricing.usd_price("btc") == Decimal("0.00001234")


@BOTH_QUOTE_ANSWERS
def test_a_rerun_waits_for_the_reconciliation_of_an_unknown_order_then_orders_anew(rig: Rig) -> None:
    rig.fake.drop_next_create()
    workflow = rig.workflow(swap_workflow("rerun"))
    rig.trigger(workflow, "rerun-1")
    order = rig.order("rerun-1", "NEEDS_RECONCILIATION")
    first = Execution.get(Execution.dedup_key == "rerun-1")
    operator = Principal.operator()
    send_all(control.cancel(operator, first.id)[1])
    second, messages = control.rerun(operator, first.id)
    send_all(messages)
    # The re-run's swap waits for the operator: the first order's shift may exist.
    step = wait_until(
        lambda: StepExecution.get_or_none(
            (StepExecution.execution == second.id) & (StepExecution.status == "WAITING")
        ),
        timeout=30,
    )
    assert step.wait_key == f"sideshift:reconcile:{order.id}" and "shiftflow sideshift reconcile" in step.error
    assert Execution.get_by_id(second.id).status == "RUNNING"
    assert rig.fake.created_total == 1
    # The operator finds no shift for it after all: the waiting re-run orders anew.
    order_ops.reconcile(order.id, none=True)
    placed = rig.order(second.dedup_key, "OPEN")
    assert placed.external_id == f"{first.id}:swap:0/r2"  # the swap's second order, named by its lineage root
    settle(rig, placed)
    assert rig.finished(second.dedup_key).status == "SUCCEEDED"
    assert rig.fake.created_total == 2 and rig.fake.double_orders() == {}


@pytest.mark.parametrize(
    "rig", [{"unknown_shift_status": 404}, {"unknown_shift_status": 400}], indirect=True, ids=["404", "400"]
)
def test_a_shift_sideshift_forgets_is_marked_for_reconciliation(rig: Rig, monkeypatch) -> None:
    monkeypatch.setattr(order_status, "NOT_FOUND_GRACE_SECONDS", 0.0)
    workflow = rig.workflow(swap_workflow("forgotten"))
    rig.trigger(workflow, "forgotten-1")
    order = rig.order("forgotten-1", "OPEN")
    with rig.fake.lock:
        del rig.fake.shifts[order.shift_id]
    marked = rig.order("forgotten-1", "NEEDS_RECONCILIATION")
    assert "does not know shift" in marked.error
    step = StepExecution.get(
        (StepExecution.execution == marked.execution_id) & (StepExecution.step_id == "swap")
    )
    assert step.status == "WAITING" and step.wait_key == f"sideshift:reconcile:{order.id}"


@BOTH_QUOTE_ANSWERS
def test_an_open_order_outlives_its_cancelled_execution(rig: Rig) -> None:
    pricing.get_price(pricing.PriceRequest.parse({"coin": "ethereum"}), configure(Settings.from_env(rig.env)))
    workflow = rig.workflow(swap_workflow("orphan"))
    rig.trigger(workflow, "orphan-1")
    order = rig.order("orphan-1", "OPEN")
    send_all(control.cancel(Principal.operator(), order.execution_id)[1])
    # Its step is cancelled, so no step timer follows the shift any more: sideshift.poll does.
    send("sideshift.poll", StepPayload(str(order.execution_id), "swap", 0))
    settle(rig, order)
    done = rig.order("orphan-1", "SETTLED")
    assert done.settle_hash and Execution.get_by_id(order.execution_id).status == "CANCELLED"
    metrics = WorkflowMetrics.get(WorkflowMetrics.workflow == workflow.id)
    # Counted as volume (0.1 ETH at the cached 2500 USD), not as a finished execution.
    assert metrics.total_volume_usd == Decimal("250") and metrics.completed_executions == 0


# -- a fake that does not flatter the client ------------------------------------------------------


def test_a_fixed_swap_is_quoted_within_the_coins_decimals(rig: Rig) -> None:
    # BTC has 8 decimals: 0.0123456789 cannot be sent, so it is rounded down before quoting
    # (never more than the workflow asked), and the quote must be for exactly that amount.
    workflow = rig.workflow(
        swap_workflow(
            "decimals",
            deposit_coin="btc",
            deposit_network="bitcoin",
            settle_coin="eth",
            settle_network="ethereum",
            amount="0.0123456789",
            settle_address=ETH,
            refund_address=BTC,
        )
    )
    rig.trigger(workflow, "decimals-1")
    order = rig.order("decimals-1", "OPEN")
    assert order.deposit_amount == "0.01234567"
    (quote,) = [r for r in rig.fake.requests if r.route == "quotes"]
    assert quote.body["depositAmount"] == "0.01234567"
    # SHIFTFLOW_SIDESHIFT_COMMISSION_RATE=0.01 reaches SideShift, and the fake charges it.
    assert quote.body["commissionRate"] == "0.01" and rig.fake.quotes[order.quote_id].commission == Decimal("0.01")
    assert rig.fake.shifts[order.shift_id].deposit_amount == Decimal("0.01234567")
    settle(rig, order)
    assert rig.finished("decimals-1").status == "SUCCEEDED"


def test_a_variable_swap_records_a_deposit_within_the_coins_decimals(rig: Rig) -> None:
    workflow = rig.workflow(
        swap_workflow(
            "variable-decimals",
            type="variable",
            deposit_coin="usdt",
            deposit_network="tron",
            amount="12.3456789",  # USDT on tron has 6 decimals (GET /coins)
            refund_address="T" + "a" * 33,
        )
    )
    rig.trigger(workflow, "variable-decimals-1")
    order = rig.order("variable-decimals-1", "OPEN")
    assert order.deposit_amount == "12.345678"
    step = StepExecution.get((StepExecution.execution == order.execution_id) & (StepExecution.step_id == "swap"))
    assert step.output["deposit_amount"] == "12.345678"


@pytest.mark.parametrize(
    "rig",
    [
        {"unknown_shift_status": 404, "malformed_shift_id_status": 404},
        {"unknown_shift_status": 400, "malformed_shift_id_status": 400},
    ],
    indirect=True,
    ids=["404", "400"],
)
def test_reconcile_with_a_shift_id_sideshift_does_not_know_says_so(rig: Rig) -> None:
    rig.fake.drop_next_create()
    workflow = rig.workflow(swap_workflow("typo"))
    rig.trigger(workflow, "typo-1")
    order = rig.order("typo-1", "NEEDS_RECONCILIATION")
    for wrong in ("ffffffffffffffffffff", "8c9ba87d02"):
        with pytest.raises(ReconcileError, match=f"SideShift does not know shift '{wrong}'"):
            order_ops.reconcile(order.id, shift_id=wrong)
    typo = rig.cli("reconcile", str(order.id), "--shift-id", "8c9ba87d02")
    assert typo.returncode == 1 and "SideShift does not know shift '8c9ba87d02'" in typo.stderr, typo.stderr
    assert "--none" in typo.stderr  # what to do next
    assert SideShiftOrder.get_by_id(order.id).state == "NEEDS_RECONCILIATION"
    (shift,) = rig.fake.shifts.values()
    order_ops.reconcile(order.id, shift_id=shift.id)
    assert SideShiftOrder.get_by_id(order.id).state == "OPEN" and rig.fake.created_total == 1


@pytest.mark.parametrize("rig", [{"retry_after_header": False}], indirect=True)
def test_a_429_without_retry_after_backs_off_then_creates_one_shift(rig: Rig) -> None:
    rig.fake.enforce_rate_limits = True
    rig.fake.limits["shifts"] = 1
    rig.fake.hit_limit("shifts", "127.0.0.1")  # this minute's one shift is spent
    workflow = rig.workflow(swap_workflow("no-retry-after"))
    rig.trigger(workflow, "no-retry-after-1")

    def backing_off() -> StepExecution | None:
        step = StepExecution.get_or_none(StepExecution.step_id == "swap")
        return step if step is not None and step.status == "PENDING" and step.resume_at else None

    step = wait_until(backing_off, timeout=30)
    assert rig.fake.rate_limited["shifts"] == 1 and "Rate limit exceeded" in step.error
    # No Retry-After: the default backoff (2 s here), not the step's 0.2 s retry policy.
    waits = (step.resume_at - utcnow()).total_seconds()
    assert waits > 1.5, waits
    assert SideShiftOrder.get(SideShiftOrder.step_id == "swap").state == "PENDING_CREATE"
    rig.fake.advance(60)  # the minute passes
    order = rig.order("no-retry-after-1", "OPEN")
    assert rig.fake.created_total == 1 and rig.fake.rate_limited["shifts"] == 1
    settle(rig, order)
    assert rig.finished("no-retry-after-1").status == "SUCCEEDED"
