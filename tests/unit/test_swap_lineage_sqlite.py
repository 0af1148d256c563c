"""Dev mode (SQLite) keeps the one-order-per-swap rule: a re-run adopts the open order of
the execution it repeats. The steps run by direct calls; the fake SideShift over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shiftflow.fakes.sideshift import FakeSideShift, FakeSideShiftServer
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import run_step as stepwork
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog, control
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.registry import create_all
from shiftflow.models.tables.sideshift_orders import SideShiftOrder, SideShiftSwap

OPERATOR = Principal.operator()
SWAP = {
    "name": "swap",
    "trigger": {"type": "manual"},
    "steps": [
        {
            "id": "swap",
            "type": "sideshift_swap",
            "with": {
                "type": "fixed",
                "deposit_coin": "eth",
                "deposit_network": "ethereum",
                "settle_coin": "btc",
                "settle_network": "bitcoin",
                "amount": "0.1",
                "settle_address": "bc1q" + "q" * 38,
                "refund_address": "0x" + "12" * 20,
            },
        }
    ],
}


@pytest.fixture
def fake(tmp_path: Any) -> Iterator[FakeSideShift]:
    state = FakeSideShift(enforce_rate_limits=False)
    server = FakeSideShiftServer(state).start()
    settings = configure(
        Settings.from_env(
            {
                "SHIFTFLOW_MODE": "dev",
                "SHIFTFLOW_DATA_DIR": str(tmp_path),
                "SHIFTFLOW_SIDESHIFT_BASE_URL": server.base_url,
                "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID": state.affiliate_id,
            }
        )
    )
    db = bind_database(settings.database_url)
    create_all(db)
    import shiftflow.actors.sideshift  # noqa: F401 - registers the sideshift_swap handler

    try:
        yield state
    finally:
        server.stop()
        db.close()


def _run(outgoing: list[Any]) -> None:
    for message in outgoing:
        _run(stepwork.run_step(message.payload))


def test_a_rerun_adopts_the_open_order_of_the_execution_it_repeats(fake: FakeSideShift) -> None:
    workflow = catalog.apply_definition(catalog.ensure_workspace("dev"), SWAP).workflow
    started = start_execution(TriggerPayload(str(workflow.id), "dev-1", "manual", {}))
    assert started.execution is not None
    _run(started.outgoing)
    order = SideShiftOrder.get()
    assert order.state == "OPEN" and order.external_id == f"{started.execution.id}:swap:0"
    control.cancel(OPERATOR, started.execution.id)
    fake.deposit(order.shift_id, order.deposit_amount)
    fake.advance(600)
    rerun, outgoing = control.rerun(OPERATOR, started.execution.id)
    assert rerun.lineage_root == started.execution.id
    _run(outgoing)
    step = StepExecution.get(StepExecution.execution == rerun.id)
    assert step.status == "SUCCEEDED" and step.output["shift_id"] == order.shift_id
    assert Execution.get_by_id(rerun.id).status == "SUCCEEDED"
    assert SideShiftOrder.select().count() == 1 and fake.created_total == 1
    assert SideShiftSwap.get().root_execution == started.execution.id
