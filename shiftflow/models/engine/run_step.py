"""Run one step end to end: claim it, do its work, record the result.

Commit first, publish second, ack last: this function commits the step's result and
returns the messages to publish; the actor publishes them and Dramatiq acks after.
Transient failures are parked with a durable timer (``retry_later``) instead of being
re-raised, so a backoff never holds a message unacknowledged in RabbitMQ.

The thread holds the step under a holder token (``kernel.holders``) whose lease its
process renews (``models.engine.leases``): another copy of the step's message is dropped while
the thread lives. Once it has claimed, the thread's writes wait out a database outage
(``leases.until_stored``) instead of failing the step or leaving it half-recorded.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dramatiq.middleware import CurrentMessage

from shiftflow.kernel import failpoints, holders, isolation, observe
from shiftflow.kernel.contracts import StepPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError, RateLimited, TransientError
from shiftflow.kernel.executors import call_tool
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.usage import observed_call
from shiftflow.models.engine import call_once, for_each, leases, llm_steps, tool_calls, waits
from shiftflow.models.engine.runs import (
    Claim,
    claim_step,
    complete_step,
    fail_step,
    orphaned,
    render_inputs,
    retry_later,
    transaction,
)

#: Step types that park the step WAITING instead of producing an output at once.
WAITING_TYPES = frozenset({"wait", "wait_event", "approval", "workflow"})

#: Bounds of the park a ``Retry-After`` asks for: at least a second (``Retry-After: 0`` must
#: not spin the timer loop), at most a day (the execution's own timeout still applies).
MIN_RATE_LIMIT_PARK = 1.0
MAX_RATE_LIMIT_PARK = 86_400.0
#: Rate-limit parks a step may take in all: the other side decides the pace, not the
#: step's retry budget, but a service that never lets up must not hold a step for ever.
MAX_RATE_LIMIT_PARKS = 50

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Step types whose whole run is owned by a domain module (registered by name, so the
#: engine does not import every domain): handler(claim, inputs, stored) -> messages.
Handler = Callable[[Claim, Any, Any], list[Outgoing]]
HANDLERS: dict[str, Handler] = {}


def register_handler(step_type: str, handler: Handler) -> None:
    """Let a domain module run every step of ``step_type`` (e.g. SideShift swaps)."""
    HANDLERS[step_type] = handler


def run_chain(payload: StepPayload, actor: str) -> list[Outgoing]:
    """Run the step of ``payload``, then, while what it made ready is exactly one step for
    the same ``actor``, run that one too in this thread; return the messages left to publish.

    Why: a linear chain of outside calls would otherwise cost a publish and a consume per
    step. Each step is still claimed and completed in transactions of its own (the next
    one is claimed only after the previous one's completion committed), so a crash leaves
    the same rows as between two messages. What resumes the chain after a crash is the
    message being run: it is acknowledged only when this function returns, so a killed
    worker's message is delivered again, finds its step done and re-publishes every step
    still PENDING or RUNNING (``runs.claim_step``), the continued one included.

    The claim of each continued step is a normal one: a cancelled or finished execution,
    a step already taken, the delivery limit all apply. A chain stops after
    ``SHIFTFLOW_CHAIN_MAX_STEPS`` steps or ``SHIFTFLOW_CHAIN_MAX_SECONDS`` so one message
    does not hold a worker thread (or its broker delivery) for long; a next step of lower
    priority than the message being run is published instead, so a chain never jumps the
    queue with work the broker would have run later.
    """
    settings = get_settings()
    started, steps = time.monotonic(), 1
    message = CurrentMessage.get_current_message()
    priority = int((getattr(message, "options", None) or {}).get("broker_priority", 0) or 0)
    outgoing = run_step(payload)
    while (len(outgoing) == 1 and outgoing[0].actor == actor and outgoing[0].delay_ms is None
           and outgoing[0].priority >= priority and steps < settings.chain_max_steps
           and time.monotonic() - started < settings.chain_max_seconds):
        nxt = outgoing[0]
        failpoints.hit("step.before_continue", nxt.payload.step_id)
        steps += 1
        try:
            outgoing = run_step(nxt.payload, continued=True)
        except Exception:
            # A continued step that raises fails as its own message would have: its message
            # is published, so its retries, delivery limit and dead letter stay its own
            # (``run_step`` released its claim), and the step before it stays done.
            log.exception("step %s of execution %s failed in a chain; publishing its message",
                          nxt.payload.step_id, nxt.payload.execution_id)
            return [nxt]
    return outgoing


def run_step(payload: StepPayload, *, continued: bool = False) -> list[Outgoing]:
    """Claim, run and record one step; return the messages for the steps that follow.

    A redelivered message whose step was RUNNING under a holder that is gone is a suspect
    and runs alone in this process (``kernel.isolation``), so a death can be pinned on it.
    ``continued``: the step is run after another in the same message (``run_chain``), so
    the message's delivery says nothing about it.
    """
    message = None if continued else CurrentMessage.get_current_message()
    suspect = bool(getattr(message, "redelivered", False)) and orphaned(payload)
    with isolation.guard(suspect):
        token = holders.new_token()
        holders.hold(token)
        leases.HEARTBEAT.ensure_running()
        try:
            return _run_step(payload, token)
        except BaseException:
            # The step may be left RUNNING under this token: hand it to the next copy.
            holders.let_go(token)
            leases.release(token)
            raise
        finally:
            holders.let_go(token)


def _run_step(payload: StepPayload, token: str) -> list[Outgoing]:
    settings = get_settings()
    claim = claim_step(payload, delivery_limit=settings.delivery_limit, token=token)
    if claim.step is None:
        return claim.outgoing
    step = claim.definition.step(claim.step.step_id)
    if step.for_each is not None and claim.step.iteration == 0:
        return for_each.expand(claim)
    failpoints.hit("step.before_work", step.id)
    extra = for_each.item_context(claim.step) if claim.step.iteration > 0 else None
    stored = None
    tool_call: tool_calls.ToolCall | None = None
    scrub: Any = str  # until the inputs are rendered, no secret was used
    try:
        rendered = leases.until_stored(f"step {step.id}: read its inputs", lambda: render_inputs(claim, extra))
        inputs, stored, scrub = rendered.call, rendered.stored, rendered.scrub
        if step.type in WAITING_TYPES:
            return waits.begin(claim, inputs, stored)
        if step.type in HANDLERS:
            return HANDLERS[step.type](claim, inputs, stored)
        # The holder's own deadline for its call: past it (a call stuck beyond its timeout)
        # the lease is no longer renewed and the step goes to whoever comes next.
        holders.set_deadline(token, step.timeout + leases.lease_seconds() if step.timeout else None)
        # A tool step's call is recorded as a tool execution and a queue job (``tool_calls``).
        name, integration, connection_id = step.type, None, None
        if step.type == "tool":
            tool_call = tool_calls.prepare(claim, step, stored, settings)
            name, integration, connection_id = tool_call.tool.name, tool_call.integration, tool_call.connection_id
            work: Callable[[], Any] = lambda: tool_call.run(inputs, scrub)  # noqa: E731
        elif step.type == "llm":
            # Its calls are recorded as llm_call rows keyed by step and attempt, so a redelivered
            # step reuses the answers it paid for (``llm_calls``), not the effect ledger.
            work = lambda: llm_steps.run(claim, step, inputs, settings)  # noqa: E731
        else:
            work = lambda: call_tool(step, inputs, settings, scrub)  # noqa: E731
        # An outside service may echo a secret it was sent: scrub before anything stores it
        # (the effect ledger's result included); the tool masks its own error messages
        # before it shortens them (a secret cut in two would escape a mask applied after).
        call = lambda: scrub(observed_call(name, step.id, inputs, claim.execution, work,  # noqa: E731
                                           integration=integration, connection_id=connection_id))
        output = call_once.call_once(claim, stored, call, kind=name) if step.effect == "once" else call()
        holders.set_deadline(token, None)  # the answer is in: recording may take as long as it takes
    except call_once.OutcomeUnknown as exc:
        effect_id, unsent = exc.effect_id, f"not sent: {exc}"
        # A for_each item's row keeps its item (``for_each.item_context``) while it is parked:
        # an operator's retry renders the item's request again, and it must be the same one
        # (the ledger compares its hash), not one rendered without the item.
        kept = stored if claim.step.iteration == 0 else None
        return leases.until_stored(f"step {step.id}: park for an operator", lambda: _recorded(
            tool_call, lambda t: t.finished("FAILED", error=unsent),
            lambda: call_once.park_unknown(claim, effect_id, kept)))
    except PermanentError as exc:
        reason = scrub(str(exc))
        return leases.until_stored(f"step {step.id}: record its failure", lambda: _recorded(
            tool_call, lambda t: t.finished("FAILED", error=reason),
            lambda: fail_step(claim, reason, stored_input=stored)))
    except TransientError as exc:
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return _park_rate_limited(claim, step, tool_call, exc, exc.retry_after, scrub, stored)
        if claim.step.retry_count >= step.retry.max:
            reason = scrub(f"gave up after {step.retry.max} retries: {exc}")
            return leases.until_stored(f"step {step.id}: record its failure", lambda: _recorded(
                tool_call, lambda t: t.finished("FAILED", error=reason),
                lambda: fail_step(claim, reason, stored_input=stored)))
        error, delay = scrub(str(exc)), step.retry.delay(claim.step.retry_count + 1, random.random())
        leases.until_stored(f"step {step.id}: park its retry", lambda: _recorded(
            tool_call, lambda t: t.finished("FAILED", error=error, retrying=True),
            lambda: retry_later(claim, error, delay)))
        return []
    failpoints.hit("step.after_work", step.id)
    complete = call_once.complete if step.effect == "once" else complete_step
    outgoing = leases.until_stored(f"step {step.id}: record its output", lambda: _recorded(
        tool_call, lambda t: t.finished("SUCCEEDED", output=output), lambda: complete(claim, output, stored)))
    failpoints.hit("step.after_commit", step.id)
    return outgoing


def _recorded(tool_call: tool_calls.ToolCall | None, record: Callable[[tool_calls.ToolCall], None],
              outcome: Callable[[], T]) -> T:
    """Record a tool call's outcome and the step's in one transaction (a step without a
    tool call records only its own)."""
    if tool_call is None:
        return outcome()
    with transaction():
        record(tool_call)
        return outcome()


def _park_rate_limited(claim: Claim, step: Any, tool_call: tool_calls.ToolCall | None, exc: RateLimited,
                       asked: float, scrub: Any, stored: Any) -> list[Outgoing]:
    """Park the step with a durable timer for as long as the other side asked (``Retry-After``):
    no blind retry, no message held. Counted in ``shiftflow_rate_limit_parks_total``."""
    assert claim.step is not None
    name = tool_call.tool.name if tool_call is not None else step.type
    if claim.step.retry_count >= max(step.retry.max, MAX_RATE_LIMIT_PARKS):
        reason = scrub(f"gave up after {claim.step.retry_count} waits: still rate limited: {exc}")
        return leases.until_stored(f"step {step.id}: record its failure", lambda: _recorded(
            tool_call, lambda t: t.finished("FAILED", error=reason),
            lambda: fail_step(claim, reason, stored_input=stored)))
    delay = min(max(asked, MIN_RATE_LIMIT_PARK), MAX_RATE_LIMIT_PARK)
    error = scrub(f"rate limited, waiting {delay:g} s as asked: {exc}")
    leases.until_stored(f"step {step.id}: park until the rate limit lifts", lambda: _recorded(
        tool_call, lambda t: t.finished("FAILED", error=error, retrying=True),
        lambda: retry_later(claim, error, delay)))
    observe.rate_limit_park(name, delay)
    return []
