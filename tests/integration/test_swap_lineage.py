"""One order per swap across a re-run lineage, whatever the operators do.

Real RabbitMQ, PostgreSQL, Redis and a Dramatiq worker with the timer loop in this
process; the fake SideShift over real HTTP; the management API in uvicorn where the
operator acts through it. Each test counts the shifts the fake created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.kernel.contracts import StepPayload, TriggerPayload
from shiftflow.kernel.enqueue import send, send_all
from shiftflow.kernel.settings import get_settings
from shiftflow.models.engine import runs
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import control
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict
from shiftflow.models.swaps import order_ops, orders
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve
from tests.integration.swap_support import BTC, SwapRig, swap_inputs, swap_rig, swap_workflow
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
OPERATOR = Principal.operator()


@pytest.fixture
def rig(real_env: dict[str, str]) -> Iterator[SwapRig]:
    yield from swap_rig(real_env)


def _failed_swap(rig: SwapRig, name: str) -> Execution:
    """An execution whose swap failed without a shift (SideShift refused the quote)."""
    workflow = rig.workflow(swap_workflow(name))
    rig.fake.disable_pair("eth-ethereum", "btc-bitcoin")
    first = rig.finished(rig.start(workflow, f"{name}-1").id)
    assert first.status == "FAILED" and "refused the quote" in first.error, rig.describe(first.id)
    assert SideShiftOrder.get(SideShiftOrder.execution == first.id).state == "FAILED"
    rig.enable_all_pairs()
    return first


def _orders_of(execution_id: Any) -> list[SideShiftOrder]:
    return list(SideShiftOrder.select().where(SideShiftOrder.execution == execution_id))


# -- finding 1: one active re-run, and an idempotency key -------------------------------------


def test_a_second_rerun_while_one_is_active_is_refused_naming_it(rig: SwapRig) -> None:
    first = _failed_swap(rig, "twice")
    rerun, messages = control.rerun(OPERATOR, first.id)
    send_all(messages)
    with pytest.raises(Conflict, match=str(rerun.id)):
        control.rerun(OPERATOR, first.id)
    order = rig.order(rerun.id, "OPEN")
    rig.settle(order)
    assert rig.finished(rerun.id).status == "SUCCEEDED"
    # Once it ended, the failed execution may be re-run again: the new re-run adopts the
    # order its sibling placed (settled) instead of placing another.
    again, messages = control.rerun(OPERATOR, first.id)
    send_all(messages)
    done = rig.finished(again.id)
    assert done.status == "SUCCEEDED", rig.describe(again.id)
    assert rig.step(again.id).output["shift_id"] == order.shift_id
    assert _orders_of(again.id) == []
    assert rig.fake.created_total == 1 and rig.fake.double_orders() == {}


def test_two_api_clients_rerunning_at_once_start_one_rerun_and_one_order(rig: SwapRig) -> None:
    first = _failed_swap(rig, "double-click")
    tenant = seed_tenant("crypto", roles=("OWNER", "MEMBER"))
    answers: dict[str, httpx.Response] = {}
    barrier = threading.Barrier(2)
    with serve(create_app(rig.settings)) as base:

        def post(role: str) -> None:
            with httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
                barrier.wait(10)
                answers[role] = client.post(f"/executions/{first.id}/rerun", headers=tenant.auth(role))

        threads = [threading.Thread(target=post, args=(role,)) for role in ("OWNER", "MEMBER")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    statuses = sorted(a.status_code for a in answers.values())
    assert statuses == [202, 409], [a.text for a in answers.values()]
    started = next(a for a in answers.values() if a.status_code == 202).json()["execution"]["id"]
    refused = next(a for a in answers.values() if a.status_code == 409).json()["error"]
    assert started in refused and "re-run" in refused
    rig.settle(rig.order(started, "OPEN"))
    assert rig.finished(started).status == "SUCCEEDED"
    assert rig.fake.created_total == 1


def test_a_rerun_retried_with_its_idempotency_key_is_the_same_rerun(rig: SwapRig) -> None:
    first = _failed_swap(rig, "retried")
    tenant = seed_tenant("crypto", roles=("MEMBER",))
    path = f"/executions/{first.id}/rerun"
    with serve(create_app(rig.settings)) as base, httpx.Client(base_url=base + "/api/v1", timeout=30) as c:
        auth = tenant.auth("MEMBER")
        one = c.post(path, headers={**auth, "Idempotency-Key": "retry-1"})
        two = c.post(path, headers={**auth, "Idempotency-Key": "retry-1"})
        other = c.post(path, headers={**auth, "Idempotency-Key": "retry-2"})
        bad = c.post(path, headers={**auth, "Idempotency-Key": ""})
        spec = c.get("/openapi.json").json()
    assert (one.status_code, two.status_code) == (202, 200), (one.text, two.text)
    rerun = one.json()["execution"]["id"]
    assert two.json()["execution"]["id"] == rerun
    assert (one.json()["created"], two.json()["created"]) == (True, False)
    assert other.status_code == 409 and rerun in other.json()["error"]
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["error"]
    params = spec["paths"]["/executions/{execution_id}/rerun"]["post"]["parameters"]
    assert "Idempotency-Key" in [p["name"] for p in params]
    # The CLI with the same key answers the same re-run.
    cli = subprocess.run(
        [SHIFTFLOW, "rerun", str(first.id), "--idempotency-key", "retry-1"],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and rerun in cli.stdout and "already" in cli.stdout, cli.stdout + cli.stderr
    rig.settle(rig.order(rerun, "OPEN"))
    assert rig.finished(rerun).status == "SUCCEEDED"
    assert Execution.select().where(Execution.parent == first.id).count() == 1
    assert rig.fake.created_total == 1


# -- finding 2: a re-run adopts what a step that ended without succeeding left behind --------


def _cancelled_while_open(rig: SwapRig, name: str) -> tuple[Execution, SideShiftOrder]:
    workflow = rig.workflow(swap_workflow(name))
    first = rig.start(workflow, f"{name}-1")
    order = rig.order(first.id, "OPEN")
    send_all(control.cancel(OPERATOR, first.id)[1])
    # Its step is cancelled, so no step timer follows the shift any more: sideshift.poll does.
    send("sideshift.poll", StepPayload(str(first.id), "swap", 0))
    return first, order


def test_a_rerun_adopts_an_order_that_settled_after_its_step_was_cancelled(rig: SwapRig) -> None:
    first, order = _cancelled_while_open(rig, "late")
    rig.settle(order)
    rig.order(first.id, "SETTLED")
    rerun, messages = control.rerun(OPERATOR, first.id)
    send_all(messages)
    wait_until(
        lambda: _orders_of(rerun.id) or Execution.get_by_id(rerun.id).status != "RUNNING",
        timeout=30,
        message="the re-run's swap to order or finish",
    )
    assert rig.fake.created_total == 1, rig.describe(rerun.id)
    done = rig.finished(rerun.id)
    assert done.status == "SUCCEEDED", rig.describe(rerun.id)
    assert rig.step(rerun.id).output["shift_id"] == order.shift_id
    assert rig.step(rerun.id).output["order_id"] == str(order.id)


def test_a_rerun_follows_an_order_still_open_from_its_cancelled_step(rig: SwapRig) -> None:
    first, order = _cancelled_while_open(rig, "open")
    rerun, messages = control.rerun(OPERATOR, first.id)
    send_all(messages)
    step = wait_until(
        lambda: (s := rig.step(rerun.id)).status not in ("PENDING", "RUNNING") or s.output,
        timeout=30,
        message="the re-run's swap to follow the open order",
    )
    assert Execution.get_by_id(rerun.id).status == "RUNNING", rig.describe(rerun.id)
    assert _orders_of(rerun.id) == [] and rig.fake.created_total == 1
    rig.settle(order)
    assert rig.finished(rerun.id).status == "SUCCEEDED", rig.describe(rerun.id)
    assert rig.step(rerun.id).output["shift_id"] == order.shift_id
    assert step is not None and rig.fake.created_total == 1


def test_a_rerun_waiting_for_a_reconciliation_adopts_the_shift_the_operator_finds(rig: SwapRig) -> None:
    rig.fake.drop_next_create()  # the shift is created, the answer never arrives
    workflow = rig.workflow(swap_workflow("found"))
    first = rig.start(workflow, "found-1")
    order = rig.order(first.id, "NEEDS_RECONCILIATION")
    send_all(control.cancel(OPERATOR, first.id)[1])
    rerun, messages = control.rerun(OPERATOR, first.id)
    send_all(messages)
    waiting = wait_until(lambda: rig.step(rerun.id).status == "WAITING" and rig.step(rerun.id), timeout=30)
    assert waiting.wait_key == f"sideshift:reconcile:{order.id}"
    assert "shiftflow sideshift reconcile" in Execution.get_by_id(rerun.id).error
    (shift,) = [s for s in rig.fake.shifts.values() if s.external_id == order.external_id]
    order_ops.reconcile(order.id, shift_id=shift.id, by="ada")
    wait_until(lambda: rig.step(rerun.id).output.get("status") == "waiting", timeout=30)
    rig.settle(SideShiftOrder.get_by_id(order.id))
    done = rig.finished(rerun.id)
    assert done.status == "SUCCEEDED" and done.error is None, rig.describe(rerun.id)
    assert rig.step(rerun.id).output["shift_id"] == shift.id
    assert _orders_of(rerun.id) == [] and rig.fake.created_total == 1


def test_a_sub_workflow_started_again_by_a_parent_rerun_adopts_its_swap(rig: SwapRig) -> None:
    rig.workflow(swap_workflow("child-swap"))
    parent_workflow = rig.workflow(
        {
            "name": "parent",
            "trigger": {"type": "manual"},
            "steps": [{"id": "sub", "type": "workflow", "with": {"workflow": "child-swap"}}],
        }
    )
    parent = rig.start(parent_workflow, "parent-1")
    child = wait_until(lambda: Execution.get_or_none(Execution.parent == parent.id), timeout=30)
    order = rig.order(child.id, "OPEN")
    send_all(control.cancel(OPERATOR, parent.id)[1])  # cancels the child with it; the shift stays open
    assert Execution.get_by_id(child.id).status == "CANCELLED"
    rerun, messages = control.rerun(OPERATOR, parent.id)
    send_all(messages)
    second = wait_until(
        lambda: Execution.get_or_none((Execution.parent == rerun.id) & (Execution.source == "workflow")),
        timeout=30,
    )
    wait_until(
        lambda: any(o.state != "PENDING_CREATE" for o in _orders_of(second.id))
        or (rig.step(second.id).output or {}).get("order_id"),
        timeout=30,
        message="the second child's swap to order or adopt",
    )
    assert rig.fake.created_total == 1, rig.describe(second.id)
    rig.settle(order)
    assert rig.finished(rerun.id).status == "SUCCEEDED", rig.describe(rerun.id)
    assert rig.step(second.id).output["shift_id"] == order.shift_id


def test_a_for_each_rerun_keeps_the_items_that_settled(rig: SwapRig) -> None:
    definition = {
        "name": "basket",
        "trigger": {"type": "manual"},
        "steps": [
            {
                "id": "swap",
                "type": "sideshift_swap",
                "for_each": "{{ trigger.addresses }}",
                "concurrency": 1,
                "with": swap_inputs(settle_address="{{ item }}"),
            }
        ],
    }
    workflow = rig.workflow(definition)
    first = rig.start(workflow, "basket-1", {"addresses": [BTC, "not-a-btc-address"]})
    settled = rig.order(first.id, "OPEN")
    rig.settle(settled)
    failed = rig.finished(first.id)
    assert failed.status == "FAILED" and "Invalid receiving address" in failed.error, rig.describe(first.id)
    assert rig.fake.created_total == 1
    rerun, messages = control.rerun(OPERATOR, first.id)
    send_all(messages)
    wait_until(
        lambda: _orders_of(rerun.id) or rig.step(rerun.id, iteration=1).status == "SUCCEEDED",
        timeout=30,
        message="the re-run's first item to order or adopt",
    )
    assert rig.fake.created_total == 1, rig.describe(rerun.id)
    done = rig.finished(rerun.id)
    assert done.status == "FAILED" and "Invalid receiving address" in done.error  # item 2 is refused again
    item = rig.step(rerun.id, iteration=1)
    assert item.status == "SUCCEEDED" and item.output["shift_id"] == settled.shift_id


def test_poll_due_settles_an_intent_its_cancelled_step_left_behind(rig: SwapRig) -> None:
    # Found by the model test: a step cancelled while it backed off (its quote failed) left
    # its intent PENDING_CREATE for ever, since no delivery of that step comes back.
    rig.fake.fail_next(100, status=503, routes=["quotes"])
    definition = swap_workflow("backoff")
    definition["steps"][0]["retry"] = {"max": 3, "backoff": 60}
    first = rig.start(rig.workflow(definition), "backoff-1")
    order = rig.order(first.id, "PENDING_CREATE")
    wait_until(lambda: rig.step(first.id).resume_at is not None, timeout=30, message="the step to back off")
    send_all(control.cancel(OPERATOR, first.id)[1])
    assert SideShiftOrder.get_by_id(order.id).state == "PENDING_CREATE"
    settled = [o.id for o, _ in order_ops.poll_due()]
    assert order.id in settled
    order = SideShiftOrder.get_by_id(order.id)
    assert order.state == "FAILED" and order.error.startswith("never sent: its step ended (cancelled")
    assert rig.fake.created_total == 0


# -- finding 3: a cancel during the quote stops the create ------------------------------------


class _CancelDuringQuote:
    """The real client, but the execution is cancelled while its quote is being fetched."""

    def __init__(self, client: Any, execution_id: Any) -> None:
        self.client, self.execution_id = client, execution_id

    def request_quote(self, **kwargs: Any) -> Any:
        control.cancel(OPERATOR, self.execution_id)
        return self.client.request_quote(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_cancel_during_the_quote_stops_the_create(rig: SwapRig, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = rig.workflow(swap_workflow("quoting"))
    started = start_execution(TriggerPayload(str(workflow.id), "quoting-1", "manual", {}))
    assert started.execution is not None
    (message,) = started.outgoing  # not published: this test runs the step itself
    claim = runs.claim_step(message.payload, delivery_limit=5)
    assert claim.step is not None
    rendered = runs.render_inputs(claim)
    real = orders.client_for(get_settings())
    monkeypatch.setattr(order_ops, "client_for", lambda settings: _CancelDuringQuote(real, started.execution.id))
    order_ops.run_swap_step(claim, rendered.call, rendered.stored)
    assert rig.fake.quotes_created == 1
    assert rig.fake.created_total == 0, "the create was sent after the execution was cancelled"
    (order,) = _orders_of(started.execution.id)
    assert order.state == "FAILED" and "cancelled" in order.error
    assert Execution.get_by_id(started.execution.id).status == "CANCELLED"
