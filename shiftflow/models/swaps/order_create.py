"""Placing a SideShift order for a claimed swap step: intent, send once, record the answer.

``create`` runs in three transactions around two HTTP calls::

    quote (fixed only; safe to repeat)
    T1  under the swap's lock: the step and its execution still RUNNING, no other
        order of the swap live or settled (else the intent FAILS, never sent);
        order PENDING_CREATE -> "CREATING" (create_sent_at), ledger SENDING      commit
        failpoint sideshift.before_create
    POST /shifts/fixed|variable with externalId                                  (never repeated)
        failpoint sideshift.after_create
    T2  order OPEN + shift id, ledger DONE, step parked for polling              commit
        failpoint sideshift.after_commit

A crash before T1 commits leaves an intent that the redelivery sends. A crash between T1
and T2, whether the POST left or not, leaves "CREATING": the redelivery marks the order
NEEDS_RECONCILIATION and never posts again (``orders`` module docstring). Errors that
prove nothing was created (the request never left, a 429, an expired quote) put the order
back to its intent and retry with the step's ``retry`` policy; a refusal fails the order
and the step; an unknown outcome goes to reconciliation. A cancel that lands during the
quote is seen by T1: the create is never sent. One that lands after T1 cannot stop the
POST already on its way; the order is recorded and followed like any other (an orphan).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.sideshift import (
    QuoteAlreadyUsed,
    QuoteExpired,
    QuoteNotFound,
    RateLimited,
    Shift,
    SideShiftClient,
    SideShiftRejected,
    SideShiftTransient,
    UnknownOutcome,
    decimal_text,
)
from shiftflow.kernel.steps import TERMINAL
from shiftflow.kernel.swap_spec import SwapSpec, request_hash
from shiftflow.models.engine import for_each, runs
from shiftflow.models.swaps import lineage, order_status
from shiftflow.models.swaps.orders import (
    KIND,
    apply_shift,
    clear_reconcile_error,
    crash_window,
    external_id,
    lock_order,
    log,
    notify,
    operator_hint,
    park_for_operator,
    park_polling,
    set_effect,
    summary,
)
from shiftflow.models.tables.base import fk, new_id, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.sideshift_orders import SideShiftOrder, SideShiftSwap
from shiftflow.models.tables.workflows import Workflow


def plan(claim: runs.Claim, spec: SwapSpec, swap: SideShiftSwap, generation: int) -> SideShiftOrder:
    """Record the intent of a new order of ``swap``: the order row (PENDING_CREATE) and its
    ledger row (PLANNED).

    Call inside the transaction that holds the swap's lock and found no order of the swap
    that forbids a new one (``swap_lineage``). ``generation`` is the order's number in its
    swap (its ``externalId`` gets ``/r<generation>`` after the first).
    """
    assert claim.step is not None
    execution, step = claim.execution, claim.step
    digest, now = request_hash(spec), utcnow()
    SideEffect.insert(
        workspace=execution.workspace_id,
        execution=execution.id,
        step_id=step.step_id,
        iteration=step.iteration,
        kind=KIND,
        state="PLANNED",
        request_hash=digest,
        created_at=now,
        updated_at=now,
    ).on_conflict_ignore().execute()
    effect = SideEffect.get(
        (SideEffect.execution == execution.id)
        & (SideEffect.step_id == step.step_id)
        & (SideEffect.iteration == step.iteration)
    )
    if effect.state != "PLANNED" or effect.request_hash != digest:
        # An earlier order of this step ended with no funds delivered: a new intent on the same row.
        SideEffect.update(
            state="PLANNED", request_hash=digest, external_ref=None, error=None, completed_at=None, updated_at=now
        ).where(SideEffect.id == effect.id).execute()
    user = (
        fk(execution, "triggered_by")
        or Workflow.select(Workflow.created_by).where(Workflow.id == execution.workflow_id).scalar()
    )
    ext = external_id(swap.root_execution, step.step_id, step.iteration, generation)
    while SideShiftOrder.select().where(SideShiftOrder.external_id == ext).exists():
        generation += 1  # an external id taken before 0007 (an order placed in its own execution's name)
        ext = external_id(swap.root_execution, step.step_id, step.iteration, generation)
    order_id = new_id()  # generated here: SQLite's insert answers its rowid, not the key
    SideShiftOrder.insert(
        id=order_id,
        workspace=execution.workspace_id,
        user=user,
        execution=execution.id,
        step_id=step.step_id,
        side_effect=effect.id,
        swap=swap.id,
        external_id=ext,
        state="PENDING_CREATE",
        shift_type=spec.shift_type,
        deposit_coin=spec.deposit_coin,
        deposit_network=spec.deposit_network,
        settle_coin=spec.settle_coin,
        settle_network=spec.settle_network,
        deposit_amount=None if spec.deposit_amount is None else decimal_text(spec.deposit_amount),
        settle_amount=None if spec.settle_amount is None else decimal_text(spec.settle_amount),
        settle_address=spec.settle_address,
        settle_memo=spec.settle_memo,
        refund_address=spec.refund_address,
        refund_memo=spec.refund_memo,
        created_at=now,
        updated_at=now,
    ).execute()
    order = SideShiftOrder.get_by_id(order_id)
    log(
        order,
        execution,
        f"SideShift order {order.id} planned ({spec.shift_type} {spec.deposit_coin}->{spec.settle_coin}), "
        f"order {generation} of swap {swap.id}",
    )
    return order


def create(
    claim: runs.Claim, order: SideShiftOrder, spec: SwapSpec, client: SideShiftClient, stored: Any
) -> list[Outgoing]:
    """Place the order once (see the module docstring) and park the step for polling.

    Every SideShift answer is recorded here (created, refused, retry, unknown outcome);
    an unexpected exception leaves the order "CREATING" for the redelivery to mark.

    Returns:
        The messages to publish after the commit.
    """
    assert claim.step is not None
    quote = intended = None
    try:
        if spec.shift_type == "fixed":
            quote = client.request_quote(
                deposit_coin=spec.deposit_coin,
                deposit_network=spec.deposit_network,
                settle_coin=spec.settle_coin,
                settle_network=spec.settle_network,
                deposit_amount=spec.deposit_amount,
                settle_amount=spec.settle_amount,
            )
        elif spec.deposit_amount is not None:
            # A variable shift sends no amount, but the deposit it records for a wallet
            # to send must fit the coin's decimals too.
            intended = client.round_amount(spec.deposit_coin, spec.deposit_network, spec.deposit_amount)
    except SideShiftTransient as exc:
        return _retry(claim, order, exc, stored)
    except SideShiftRejected as exc:
        what = "SideShift refused the quote" if spec.shift_type == "fixed" else "the deposit amount is refused"
        return fail(claim, order, f"{what}: {exc}", stored)
    with runs.transaction():
        swap = lineage.lock_swap_of(order)
        locked = lock_order(order.id)
        if locked.state != "PENDING_CREATE" or locked.create_sent_at is not None:
            # Another delivery of this step (a redelivery racing a live one) got here
            # first and is sending: let it record the answer.
            return []
        # Last check before sending, under the swap's lock: the step and its execution are
        # still running (a cancel during the quote stops here), and no other order of the
        # swap appeared (it would be adopted instead).
        execution = runs.lock_execution(claim.execution.id)
        now_step = StepExecution.get_or_none(StepExecution.id == claim.step.id)
        if execution.status != "RUNNING" or now_step is None or now_step.status != "RUNNING":
            what = f"execution {execution.status.lower()}" if execution.status != "RUNNING" else (
                f"step {now_step.status.lower() if now_step else 'gone'}"
            )
            _never_sent(locked, execution, f"{what} before the create call")
            return []
        other = lineage.blocking(swap, locked.id) if swap is not None else None
        if other is not None:
            _never_sent(locked, execution, f"order {other.id} of the same swap is {other.state}")
            runs.retry_later(claim, f"SideShift order {other.id} of this swap is {other.state}", 0.0)
            return []
        locked.create_sent_at = utcnow()
        if quote is not None:
            locked.quote_id = quote.id
            locked.deposit_amount, locked.settle_amount = (
                decimal_text(quote.deposit_amount),
                decimal_text(quote.settle_amount),
            )
            locked.rate = decimal_text(quote.rate)
            locked.expires_at = quote.expires_at.astimezone(dt.UTC).replace(tzinfo=None)
        elif intended is not None:
            locked.deposit_amount = decimal_text(intended)
        locked.error = None
        locked.save()
        SideEffect.update(
            state="SENDING",
            sent_at=locked.create_sent_at,
            attempts=SideEffect.attempts + 1,
            updated_at=utcnow(),
        ).where(SideEffect.id == fk(locked, "side_effect")).execute()
    execution_id = claim.execution.id
    crash_window("sideshift.before_create", execution_id)
    try:
        shift = _post(client, locked, spec)
    except UnknownOutcome as exc:
        return needs_reconciliation(claim, locked, f"the create call's outcome is unknown ({exc})", stored)
    except QuoteAlreadyUsed as exc:
        return needs_reconciliation(
            claim,
            locked,
            f"SideShift says quote {locked.quote_id} was already used, so a shift may exist for it ({exc})",
            stored,
        )
    except (QuoteExpired, QuoteNotFound, SideShiftTransient) as exc:
        return _retry(claim, locked, exc, stored, sent=True)
    except SideShiftRejected as exc:
        return fail(claim, locked, f"SideShift refused the order: {exc}", stored)
    crash_window("sideshift.after_create", execution_id)
    outgoing = record_created(claim, locked, shift, stored)
    crash_window("sideshift.after_commit", execution_id)
    return outgoing


def _never_sent(order: SideShiftOrder, execution: Execution, reason: str) -> None:
    """The intent will not be sent: FAILED (provably no shift), with the reason."""
    order.state, order.error, order.completed_at = "FAILED", f"never sent: {reason}", utcnow()
    order.save()
    set_effect(order, "FAILED", error=order.error)
    log(order, execution, f"SideShift order {order.id} failed: {order.error}", level="warn")


def _post(client: SideShiftClient, order: SideShiftOrder, spec: SwapSpec) -> Shift:
    if spec.shift_type == "fixed":
        assert order.quote_id is not None
        return client.create_fixed_shift(
            quote_id=order.quote_id,
            settle_address=spec.settle_address,
            settle_memo=spec.settle_memo,
            refund_address=spec.refund_address,
            refund_memo=spec.refund_memo,
            external_id=order.external_id,
        )
    return client.create_variable_shift(
        deposit_coin=spec.deposit_coin,
        deposit_network=spec.deposit_network,
        settle_coin=spec.settle_coin,
        settle_network=spec.settle_network,
        settle_address=spec.settle_address,
        settle_memo=spec.settle_memo,
        refund_address=spec.refund_address,
        refund_memo=spec.refund_memo,
        external_id=order.external_id,
    )


def record_created(claim: runs.Claim, order: SideShiftOrder, shift: Shift, stored: Any) -> list[Outgoing]:
    """T2: the 201 answer. Recorded even if a racing delivery already marked the order for
    reconciliation: the answer in hand settles that question."""
    assert claim.step is not None
    with runs.transaction():
        locked = lock_order(order.id)
        if locked.shift_id is not None or locked.state not in ("PENDING_CREATE", "NEEDS_RECONCILIATION"):
            return []
        apply_shift(locked, shift)
        now = utcnow()
        locked.state, locked.error = "OPEN", None
        locked.last_polled_at, locked.next_poll_at = now, now + order_status.first_interval()
        locked.save()
        set_effect(locked, "DONE", external_ref=shift.id, result=summary(locked))
        execution = runs.lock_execution(claim.execution.id)
        clear_reconcile_error(execution)
        if shift.external_id is not None and shift.external_id != locked.external_id:
            log(
                locked,
                execution,
                f"SideShift echoed externalId {shift.external_id!r}, expected {locked.external_id!r}",
                level="warn",
            )
        log(
            locked,
            execution,
            f"SideShift order {locked.id} created: shift {shift.id} ({shift.status}), deposit "
            f"{locked.deposit_amount or 'any'} {locked.deposit_coin} to {locked.deposit_address}",
        )
        parked = park_polling(claim.step, locked.next_poll_at, summary(locked))
        _store_input(claim, stored)
    return [] if parked else order_status.orphan_poll(locked)


def _store_input(claim: runs.Claim, stored: Any) -> None:
    """Keep the step's (masked) inputs on its row while it is parked."""
    assert claim.step is not None
    if stored is None:
        return
    value = runs.masked(stored)
    if claim.step.iteration > 0:
        # A for_each item's row holds its item, which every later run (each poll) renders
        # its inputs from: keep it next to the rendered inputs.
        value = {**(value if isinstance(value, dict) else {"inputs": value}), "item": for_each.item_context(claim.step)["item"]}
    StepExecution.update(input=value).where(StepExecution.id == claim.step.id).execute()


def needs_reconciliation(
    claim: runs.Claim, order: SideShiftOrder, reason: str, stored: Any
) -> list[Outgoing]:
    """Mark the order NEEDS_RECONCILIATION and park the step for an operator; never re-post.

    The execution stays RUNNING (its money outcome is unknown) and says why in its error.
    """
    assert claim.step is not None
    with runs.transaction():
        locked = lock_order(order.id)
        if locked.state not in ("PENDING_CREATE", "NEEDS_RECONCILIATION"):
            return []  # a racing delivery recorded the answer meanwhile
        first = locked.state != "NEEDS_RECONCILIATION"
        locked.state, locked.error = "NEEDS_RECONCILIATION", reason
        locked.save()
        set_effect(locked, "UNKNOWN", error=reason)
        execution = runs.lock_execution(claim.execution.id)
        text = (
            f"step {claim.step.step_id}: SideShift order {locked.id} needs reconciliation: {reason}; "
            f"{operator_hint(locked)}"
        )
        if execution.status == "RUNNING":
            execution.error = text[:4000]
            execution.save(only=[Execution.error])
        park_for_operator(claim.step, locked, text)
        _store_input(claim, stored)
        if first:
            log(locked, execution, text, level="error")
            notify(
                execution,
                "SYSTEM_ALERT",
                f"SideShift order {locked.id} needs reconciliation",
                text,
                {"orderId": str(locked.id), "externalId": locked.external_id},
            )
    return []


def fail(claim: runs.Claim, order: SideShiftOrder, reason: str, stored: Any) -> list[Outgoing]:
    """The order provably created nothing: FAILED, and the step fails with the reason."""
    assert claim.step is not None
    with runs.transaction():
        locked = lock_order(order.id)
        if locked.state not in ("PENDING_CREATE",):
            return []
        locked.state, locked.error, locked.completed_at = "FAILED", reason, utcnow()
        locked.save()
        set_effect(locked, "FAILED", error=reason)
        execution = runs.lock_execution(claim.execution.id)
        log(locked, execution, f"SideShift order {locked.id} failed: {reason}", level="error")
        was_running = execution.status not in TERMINAL
        outgoing = runs.record_step(
            execution,
            claim.definition,
            claim.step,
            "FAILED",
            error=reason,
            output=summary(locked),
            stored_input=stored,
        )
        order_status.after_outcome(execution, locked, was_running=was_running)
    return outgoing


def _retry(
    claim: runs.Claim, order: SideShiftOrder, exc: Exception, stored: Any, *, sent: bool = False
) -> list[Outgoing]:
    """Nothing was created: back to the intent, and retry with the step's policy (or give up)."""
    assert claim.step is not None
    step = claim.definition.step(claim.step.step_id)
    if claim.step.retry_count >= step.retry.max:
        return fail(claim, order, f"gave up after {step.retry.max} retries: {exc}", stored)
    if sent:
        with runs.transaction():
            locked = lock_order(order.id)
            if locked.state == "PENDING_CREATE":
                locked.create_sent_at, locked.error = None, str(exc)
                locked.save()
                set_effect(locked, "PLANNED", error=str(exc))
    attempt = claim.step.retry_count + 1
    delay = step.retry.delay(attempt, random.random())
    if isinstance(exc, RateLimited):
        # SideShift's Retry-After when it sends one; else a backoff long enough for its
        # per-minute window, spread a little so that workers do not return together.
        backoff = get_settings().sideshift_rate_limit_backoff_seconds
        wait = exc.wait_seconds(attempt, default=backoff)
        delay = max(delay, wait if exc.retry_after is not None else wait * random.uniform(1.0, 1.2))
    runs.retry_later(claim, f"SideShift: {exc}", delay)
    return []


__all__ = ["create", "fail", "needs_reconciliation", "plan", "record_created"]
