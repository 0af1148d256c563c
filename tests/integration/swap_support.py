"""Shared set-up of the swap lineage tests: a worker and the timer loop on real services,
the fake SideShift over real HTTP, and helpers to start, find and settle swaps.

The fake's clock moves only with ``fake.advance``, so a shift settles exactly when a test
says so; the workers poll every 0.1-0.4 s.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq

from shiftflow.consumers import timers
from shiftflow.consumers.boot import boot
from shiftflow.fakes.sideshift import FakeSideShift, FakeSideShiftServer
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send_all
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog, queries
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder
from shiftflow.models.tables.tenancy import User
from shiftflow.models.tables.workflows import Workflow
from tests.support.waiting import wait_until

BTC = "bc1q" + "q" * 38
ETH = "0x" + "12" * 20
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def swap_inputs(**with_: Any) -> dict[str, Any]:
    """The ``with`` of a fixed ETH -> BTC swap of 0.1 ETH (override any field)."""
    return {
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


def swap_workflow(name: str, **with_: Any) -> dict[str, Any]:
    """A one-step workflow: a fixed swap (retried up to 3 times)."""
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "swap", "type": "sideshift_swap", "retry": {"max": 3, "backoff": 0.2}, "with": swap_inputs(**with_)}
        ],
    }


@dataclasses.dataclass
class SwapRig:
    """The fake SideShift, the settings of the running worker, and a user to notify."""

    fake: FakeSideShift
    env: dict[str, str]
    settings: Settings
    user: User

    def workflow(self, definition: dict[str, Any]) -> Workflow:
        workflow = catalog.apply_definition(catalog.ensure_workspace("crypto"), definition).workflow
        Workflow.update(created_by=self.user.id).where(Workflow.id == workflow.id).execute()
        return workflow

    def start(self, workflow: Workflow, key: str, data: dict[str, Any] | None = None) -> Execution:
        """Start an execution and publish its first steps (the worker runs them)."""
        started = start_execution(TriggerPayload(str(workflow.id), key, "manual", data or {}))
        assert started.execution is not None
        send_all(started.outgoing)
        return started.execution

    def finished(self, execution_id: Any, timeout: float = 30) -> Execution:
        def done() -> Execution | None:
            row = Execution.get_by_id(execution_id)
            return row if row.status in FINAL else None

        try:
            return wait_until(done, timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"execution {execution_id} did not finish: {self.describe(execution_id)}") from exc

    def order(self, execution_id: Any, state: str, timeout: float = 30) -> SideShiftOrder:
        """The order placed by ``execution_id`` once it is in ``state``."""

        def found() -> SideShiftOrder | None:
            return SideShiftOrder.get_or_none(
                (SideShiftOrder.execution == execution_id) & (SideShiftOrder.state == state)
            )

        try:
            return wait_until(found, timeout=timeout)
        except TimeoutError as exc:
            raise AssertionError(f"no {state} order of {execution_id}: {self.describe(execution_id)}") from exc

    def step(self, execution_id: Any, step_id: str = "swap", iteration: int = 0) -> StepExecution:
        return StepExecution.get(
            (StepExecution.execution == execution_id)
            & (StepExecution.step_id == step_id)
            & (StepExecution.iteration == iteration)
        )

    def describe(self, execution_id: Any) -> str:
        detail = queries.detail_dict(Execution.get_by_id(execution_id))
        orders = [
            (o.state, o.error)
            for o in SideShiftOrder.select().where(SideShiftOrder.execution == execution_id)
        ]
        steps = [(s["step_id"], s["status"], s["error"]) for s in detail["steps"]]
        return f"{detail['status']} {detail['error']} steps={steps} orders={orders}"

    def settle(self, order: SideShiftOrder) -> None:
        """Fund the shift with exactly its amount and let the fake clock run until it settles."""
        self.fake.deposit(order.shift_id, order.deposit_amount)
        self.fake.advance(600)

    def enable_all_pairs(self) -> None:
        with self.fake.lock:
            self.fake.disabled_pairs.clear()


@dataclasses.dataclass
class _Running:
    worker: dramatiq.Worker
    broker: dramatiq.Broker
    stop: threading.Event
    loop: threading.Thread


def _start_worker(settings: Settings) -> _Running:
    broker = boot(settings)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    stop = threading.Event()
    loop = threading.Thread(target=timers.run_loop, args=(stop, 0.05), daemon=True)
    loop.start()
    return _Running(worker, broker, stop, loop)


def _stop_worker(running: _Running) -> None:
    running.stop.set()
    running.loop.join(5)
    running.worker.stop()
    running.broker.emit_before("worker_shutdown", running.worker)
    running.broker.close()


def swap_rig(real_env: dict[str, str]) -> Iterator[SwapRig]:
    """The body of a ``rig`` fixture: fake SideShift, worker, timer loop (stopped after)."""
    fake = FakeSideShift(enforce_rate_limits=False)
    server = FakeSideShiftServer(fake).start()
    env = {
        **real_env,
        "SHIFTFLOW_SIDESHIFT_BASE_URL": server.base_url,
        "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID": fake.affiliate_id,
        "SHIFTFLOW_SIDESHIFT_POLL_SECONDS": "0.1",
        "SHIFTFLOW_SIDESHIFT_POLL_MAX_SECONDS": "0.4",
        "SHIFTFLOW_SIDESHIFT_SHIFTS_PER_MINUTE": "1000",
        "SHIFTFLOW_SIDESHIFT_QUOTES_PER_MINUTE": "1000",
        "SHIFTFLOW_SIDESHIFT_TIMEOUT_SECONDS": "2",
    }
    settings = configure(Settings.from_env(env))
    running = _start_worker(settings)
    user = User.create(email="trader@example.com", name="Trader")
    try:
        yield SwapRig(fake, env, settings, user)
    finally:
        _stop_worker(running)
        server.stop()
