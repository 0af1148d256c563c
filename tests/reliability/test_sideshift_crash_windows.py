"""Zero double orders: real worker processes crash in each window around the SideShift create.

Windows (failpoints in ``shiftflow.models.swaps.order_create``):

* ``before_create``: the order is committed as sent ("CREATING"), the POST has not left;
* ``after_create``: SideShift created the shift and answered, the answer is not committed;
* ``after_commit``: the answer is committed, the message is not acknowledged.

For each window, ``RUNS`` executions (default 200; ``SHIFTFLOW_TEST_SIDESHIFT_RUNS``) of a
one-step swap workflow are created first, so that their ids are known, and the worker pool
(``shiftflow workers``, real processes) starts with an ``exit-once`` failpoint keyed by
each execution id: every execution's worker dies exactly once at that point. A ``sleep``
failpoint just before it (``<window>.pause``) lets concurrent deliveries reach the same
window, so one process death covers many executions; every delivery killed there was
inside the window too. The harness plays a supervisor: it SIGKILLs what is left of the
pool when a failpoint fired and starts it again, until every order is final or marked
for reconciliation. Then it plays the operator: each NEEDS_RECONCILIATION order is
reconciled with what the fake SideShift really holds for its ``externalId`` (the shift,
or none), and every execution must end (settled, or failed for "no shift").

Judged against the fake SideShift's own count of the shifts it created: 0 double orders
(no quote, no externalId behind two shifts), at most one shift per order, and the
reconciled orders match exactly the shifts that exist. The fake ACCEPTS a reused quote
(SideShift's answer is undocumented): no order may rely on SideShift refusing one.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shiftflow.fakes.sideshift import FakeBehaviour, FakeSideShift, FakeSideShiftServer, SystemClock, Timings
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send_all
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog
from shiftflow.models.swaps import order_ops
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder

pytestmark = [pytest.mark.acceptance]

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
RUNS = int(os.environ.get("SHIFTFLOW_TEST_SIDESHIFT_RUNS", "200"))
THREADS = int(os.environ.get("SHIFTFLOW_TEST_SIDESHIFT_THREADS", "30"))
PAUSE_SECONDS = 1.2  # > Dramatiq's 1 s ack flush: a death must not take the acks of finished work with it
FINAL_ORDER = ("SETTLED", "REFUNDED", "EXPIRED", "FAILED", "NEEDS_RECONCILIATION")
FINAL_EXECUTION = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
DEFINITION = {
    "name": "swap-once",
    "trigger": {"type": "manual"},
    "steps": [
        {
            "id": "swap",
            "type": "sideshift_swap",
            "retry": {"max": 5, "backoff": 0.2},
            "with": {
                "type": "fixed",
                "deposit_coin": "eth",
                "deposit_network": "ethereum",
                "settle_coin": "btc",
                "settle_network": "bitcoin",
                "amount": "0.05",
                "settle_address": "bc1q" + "q" * 38,
                "refund_address": "0x" + "12" * 20,
            },
        }
    ],
}


class Pool:
    """``shiftflow workers`` in its own process group; restarted after every crash."""

    def __init__(self, env: dict[str, str], log_dir: Path, marker_dir: Path) -> None:
        self.env, self.log_dir, self.marker_dir = env, log_dir, marker_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: Counter[int] = Counter()
        self._markers = 0

    def markers(self) -> int:
        return len(glob.glob(str(self.marker_dir / "failpoint-*")))

    def start(self) -> None:
        self.starts += 1
        with (self.log_dir / f"workers-{self.starts:03d}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    SHIFTFLOW,
                    "workers",
                    "--queues",
                    "triggers",
                    "steps",
                    "tools",
                    "sideshift",
                    "--processes",
                    "1",
                    "--threads",
                    str(THREADS),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.exits[self.proc.wait(30)] += 1
        self.proc = None

    def supervise(self) -> None:
        """One look: a failpoint fired (a new marker) or the pool died: kill the rest, restart."""
        markers = self.markers()
        died = self.proc is None or self.proc.poll() is not None
        if markers > self._markers or died:
            self._markers = markers
            self.kill()
            self.start()

    def tail(self) -> str:
        logs = sorted(self.log_dir.glob("workers-*.log"))
        return logs[-1].read_text(errors="replace")[-3000:] if logs else "(no log)"


def _orders() -> list[SideShiftOrder]:
    return list(SideShiftOrder.select())


def _settled_phase(runs_expected: int) -> bool:
    """Every order final or marked, and every execution ended or waiting for an operator.

    Two COUNTs: the check runs in the process that also serves the fake SideShift."""
    orders = SideShiftOrder.select().count()
    open_orders = SideShiftOrder.select().where(SideShiftOrder.state.not_in(FINAL_ORDER)).count()
    waiting = StepExecution.select(StepExecution.execution).where(StepExecution.status == "WAITING")
    running = (
        Execution.select()
        .where(Execution.status.not_in(FINAL_EXECUTION) & Execution.id.not_in(waiting))
        .count()
    )
    return orders == runs_expected and open_orders == 0 and running == 0


def _wait(pool: Pool, done: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while True:
        pool.supervise()
        if time.monotonic() >= next_check:
            if done():
                return
            next_check = time.monotonic() + 0.5
        if time.monotonic() > deadline:
            counts = Counter(o.state for o in _orders())
            raise AssertionError(
                f"{what} not reached in {timeout:g} s: orders {dict(counts)}; pool starts "
                f"{pool.starts}\n{pool.tail()}"
            )
        time.sleep(0.05)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("window", ["before_create", "after_create", "after_commit"])
def test_no_double_order_whatever_the_crash_window(
    window: str, real_env: dict[str, str], tmp_path: Path
) -> None:
    fake = FakeSideShift(
        clock=SystemClock(),
        auto_deposit=True,
        enforce_rate_limits=False,
        timings=Timings(confirm=0.3, process=0.1, settle=0.1),
        behaviour=FakeBehaviour(reused_quote="accept"),
    )
    server = FakeSideShiftServer(fake).start()
    markers = tmp_path / "failpoints"
    markers.mkdir()
    env = {
        **os.environ,
        **real_env,
        "SHIFTFLOW_SIDESHIFT_BASE_URL": server.base_url,
        "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID": fake.affiliate_id,
        "SHIFTFLOW_SIDESHIFT_POLL_SECONDS": "0.3",
        "SHIFTFLOW_SIDESHIFT_POLL_MAX_SECONDS": "1",
        "SHIFTFLOW_SIDESHIFT_SHIFTS_PER_MINUTE": "100000",
        "SHIFTFLOW_SIDESHIFT_QUOTES_PER_MINUTE": "100000",
        "SHIFTFLOW_DELIVERY_LIMIT": "50",
        "SHIFTFLOW_LOG_LEVEL": "WARNING",
        "SHIFTFLOW_FAILPOINT_DIR": str(markers),
    }
    settings = configure(Settings.from_env(env))
    db = bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    pool = Pool(env, tmp_path, markers)
    started = time.monotonic()
    try:
        workflow = catalog.apply_definition(catalog.ensure_workspace("rel"), DEFINITION).workflow
        ids, outgoing = [], []
        for n in range(RUNS):
            run = start_execution(TriggerPayload(str(workflow.id), f"{window}-{n}", "test", {}))
            assert run.execution is not None
            ids.append(run.execution.id)
            outgoing += run.outgoing
        send_all(outgoing)
        points = [f"sideshift.{window}.pause=sleep={PAUSE_SECONDS}"]
        points += [f"sideshift.{window}:{execution_id}=exit-once" for execution_id in ids]
        env["SHIFTFLOW_FAILPOINTS"] = ",".join(points)
        pool.start()
        _wait(pool, lambda: _settled_phase(RUNS), 200, "every order final or marked for reconciliation")
        crashed = pool.markers()
        marked = [o for o in _orders() if o.state == "NEEDS_RECONCILIATION"]

        # The invariant, before anyone reconciles: no double order, every order final or marked.
        assert fake.double_orders() == {}
        assert all(n == 1 for n in fake.created_by_external_id.values())
        assert len(_orders()) == RUNS
        created = fake.created_total
        assert created <= RUNS
        if window == "before_create":  # each execution died after "sent", before its POST
            assert created == 0 and len(marked) == RUNS
        elif window == "after_create":  # each died after its POST or, killed by another's exit, before it
            assert len(marked) == RUNS
        else:  # deaths also kill deliveries that were between "sent" and "recorded"
            assert set(Counter(o.state for o in _orders())) <= {"SETTLED", "NEEDS_RECONCILIATION"}
        phase1 = time.monotonic() - started

        # The operator: attach the shift SideShift really has for each externalId, or say none.
        by_external = {s.external_id: s.id for s in fake.shifts.values()}
        for order in marked:
            shift_id = by_external.get(order.external_id)
            _, messages = order_ops.reconcile(order.id, shift_id=shift_id, none=shift_id is None, by="test")
            send_all(messages)

        def all_finished() -> bool:
            return Execution.select().where(Execution.status.not_in(FINAL_EXECUTION)).count() == 0

        _wait(pool, all_finished, 120, "every execution finished")
        with_shift = {o.id for o in _orders() if o.shift_id}
        assert {o.shift_id for o in _orders() if o.shift_id} == set(fake.created)  # every shift has its order
        assert all((o.state == "SETTLED") == (o.id in with_shift) for o in _orders())
        assert all(o.state in ("SETTLED", "FAILED") for o in _orders())
        outcome = {o.execution_id: o.state for o in _orders()}
        for execution in Execution.select():
            assert execution.status == ("SUCCEEDED" if outcome[execution.id] == "SETTLED" else "FAILED")
        assert fake.double_orders() == {} and fake.created_total == created
        quarantined = StepExecution.select().where(StepExecution.error.contains("quarantined")).count()
        print(
            f"\n{window}: {RUNS} executions, {crashed} failpoint exits, {pool.starts} pool starts, "
            f"{len(marked)} marked for reconciliation, {created} shifts created, "
            f"0 double orders, {quarantined} quarantined, {phase1:.1f} s to final-or-marked, "
            f"{time.monotonic() - started:.1f} s in all; pool exits {dict(pool.exits)}"
        )
        assert crashed >= 1 and quarantined == 0
    finally:
        pool.kill()
        broker.close()
        server.stop()
        db.close()
