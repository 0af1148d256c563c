"""SideShift actors on the ``sideshift`` queue, and the step handlers of the crypto workflows.

``sideshift.order`` runs a ``sideshift_swap`` step (place the order once, or poll it when
the step's durable timer fires); ``sideshift.poll`` polls an order no active step follows.
Importing this module registers the ``price`` and ``sideshift_swap`` step handlers.
"""

from __future__ import annotations

from typing import Any

from shiftflow.actors import actor
from shiftflow.kernel.contracts import StepPayload, decode
from shiftflow.kernel.enqueue import send_all
from shiftflow.models.engine.run_step import register_handler, run_step
from shiftflow.models.swaps import order_ops, pricing

register_handler("price", pricing.run_price_step)
register_handler("sideshift_swap", order_ops.run_swap_step)


@actor("sideshift.order")
def order(payload: dict[str, Any]) -> None:
    """Run a swap step, publish what follows, then settle an order its step left behind."""
    step = decode(StepPayload, payload)
    send_all(run_step(step))
    send_all(order_ops.after_delivery(step))


@actor("sideshift.poll")
def poll(payload: dict[str, Any]) -> None:
    """Poll the order of one swap step once (orphans: their step no longer follows them)."""
    send_all(order_ops.poll_for_step(decode(StepPayload, payload)))
