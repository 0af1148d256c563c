"""OpenTelemetry traces: one trace per execution, from its producer through every step.

Off unless ``SHIFTFLOW_OTLP_ENDPOINT`` is set (and the ``tracing`` extra installed): then
``configure`` installs a tracer provider exporting OTLP over HTTP. While it is off every
hook here returns after one module-global test (``_tracer is None``), and the consumer
middleware is not even in the broker's stack, so the step path pays nothing measurable
(docs/operations.md#tracing has the numbers).

What makes a trace:

* **Trace id = execution id.** The execution's UUID (``contracts.execution_id_for`` for a
  trigger, known before the execution exists) is the trace id, so every span of one
  execution lands in one trace even when a message was re-published without context (the
  timer loop's retries and resumed waits), and an operator finds the trace by the id the
  API returned.
* **Producer span.** Publishing ``triggers.start`` outside any span of that execution
  (the ingress answering a webhook, the API's run, the scheduler's fire) opens the root
  span ``trigger <source>``.
* **Context in the message.** ``stamp`` puts the W3C ``traceparent`` into the Dramatiq
  message's ``options``: the envelope every ShiftFlow publisher writes (``enqueue``,
  ``kernel.confirm_publisher``, the scheduler's batch publisher), so it crosses RabbitMQ with
  the message and every actor continues the trace (``TracingMiddleware``).
* **Spans.** ``<actor>`` per message processed (consumer), ``step <id>`` per step outcome
  (inline, queued, each fan-out item; timed from the step's recorded duration), and
  ``tool <type>`` around each outside call.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dramatiq.middleware import Middleware

from shiftflow.kernel.contracts import StepPayload, TriggerPayload, execution_id_for
from shiftflow.kernel.settings import Settings

log = logging.getLogger(__name__)

#: The tracer when tracing is on; None (the default) turns every hook into a no-op.
_tracer: Any = None
_provider: Any = None
_lock = threading.Lock()
#: The trace id the next root span gets (the execution's), set around ``start_span``.
_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("shiftflow_trace_id", default=None)

#: Final step statuses that get a step span (WAITING, RUNNING are not outcomes).
FINAL_STEP_STATUSES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED", "TIMED_OUT"})


def enabled() -> bool:
    """True when spans are made (a provider is installed)."""
    return _tracer is not None


def configure(settings: Settings, service_name: str = "shiftflow") -> bool:
    """Turn tracing on for this process when ``settings.otlp_endpoint`` is set (idempotent).

    Returns:
        True when tracing is on. Without the ``tracing`` extra installed the endpoint is
        ignored with a warning (tracing is never a reason for a process not to start).
    """
    if _tracer is not None or not settings.otlp_endpoint:
        return enabled()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("SHIFTFLOW_OTLP_ENDPOINT is set but the tracing extra is not installed "
                    "(pip install 'shiftflow[tracing]'): no spans are exported")
        return False
    provider = make_provider(service_name)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    install(provider)
    return True


def make_provider(service_name: str = "shiftflow") -> Any:
    """A tracer provider whose root spans take the execution's id as trace id (add a span
    processor, then ``install`` it; tests add the SDK's in-memory exporter)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class ExecutionIds(RandomIdGenerator):
        """Random ids, except a root span's trace id while one is forced (the execution's)."""

        def generate_trace_id(self) -> int:
            forced = _forced_trace_id.get()
            return forced if forced else super().generate_trace_id()

    return TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=ExecutionIds())


def install(provider: Any) -> None:
    """Use ``provider`` for every span of this process; None turns tracing off (tests)."""
    global _tracer, _provider
    with _lock:
        if _provider is not None and _provider is not provider:
            _provider.shutdown()
        _provider = provider
        _tracer = provider.get_tracer("shiftflow") if provider is not None else None


def flush(timeout_ms: int = 5_000) -> None:
    """Export the spans still buffered (before a process exits; tests)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


# -- trace ids ------------------------------------------------------------------------------


def trace_id_of(payload: Any) -> int | None:
    """The trace id of the execution a message payload belongs to (its UUID as an int)."""
    try:
        if isinstance(payload, TriggerPayload):
            return execution_id_for(payload.workflow_id, payload.dedup_key).int
        if isinstance(payload, StepPayload):
            return uuid.UUID(str(payload.execution_id)).int
        if isinstance(payload, Mapping):
            if payload.get("execution_id"):
                return uuid.UUID(str(payload["execution_id"])).int
            if payload.get("workflow_id") and payload.get("dedup_key") is not None:
                return execution_id_for(payload["workflow_id"], str(payload["dedup_key"])).int
    except (ValueError, TypeError, AttributeError):
        return None
    return None


def _parent(trace_id: int | None) -> tuple[Any, list[Any]]:
    """The context a span of execution ``trace_id`` starts in, and the links it carries.

    The current span when it belongs to that execution; else a new root (forced to the
    execution's trace id), linked to the current span if there is one (a sub-workflow
    started by a step of another execution)."""
    from opentelemetry import trace
    from opentelemetry.context import Context

    current = trace.get_current_span().get_span_context()
    if current.is_valid and (trace_id is None or current.trace_id == trace_id):
        return None, []
    links = [trace.Link(current)] if current.is_valid else []
    return Context(), links


@contextmanager
def _forced(trace_id: int | None) -> Iterator[None]:
    token = _forced_trace_id.set(trace_id)
    try:
        yield
    finally:
        _forced_trace_id.reset(token)


def _start(name: str, trace_id: int | None, kind: Any, attributes: dict[str, Any],
           start_time: int | None = None) -> Any:
    context, links = _parent(trace_id)
    with _forced(trace_id):
        return _tracer.start_span(name, context=context, kind=kind, links=links, attributes=attributes,
                                  start_time=start_time)


# -- producers --------------------------------------------------------------------------------


def stamp(options: dict[str, Any], actor: str, payload: Any) -> dict[str, Any]:
    """``options`` of a message about to be published, with the trace context added.

    Off: ``options`` itself. On: ``traceparent`` (and ``tracestate``) of the current span
    when it belongs to the payload's execution, else of a new producer span (the root of
    the execution's trace when the message is ``triggers.start``)."""
    if _tracer is None:
        return options
    return _stamp(options, actor, payload)


def _stamp(options: dict[str, Any], actor: str, payload: Any) -> dict[str, Any]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    trace_id = trace_id_of(payload)
    context, _links = _parent(trace_id)
    if context is None:
        TraceContextTextMapPropagator().inject(carrier)
    else:
        source = getattr(payload, "source", "") or (payload.get("source", "") if isinstance(payload, Mapping)
                                                     else "")
        name = f"trigger {source}" if actor == "triggers.start" and source else f"publish {actor}"
        attributes = {"messaging.system": "rabbitmq", "messaging.operation.type": "publish",
                      "shiftflow.actor": actor}
        if trace_id is not None:
            attributes["shiftflow.execution_id"] = str(uuid.UUID(int=trace_id))
        workflow = getattr(payload, "workflow_id", None)
        if workflow:
            attributes["shiftflow.workflow_id"] = str(workflow)
        span = _start(name, trace_id, trace.SpanKind.PRODUCER, attributes)
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        span.end()
    return {**options, **carrier}


# -- consumers ------------------------------------------------------------------------------


class TracingMiddleware(Middleware):
    """A consumer span around each message, continuing the trace its ``traceparent`` names
    (in the broker's stack only while tracing is on: ``kernel.broker.middleware_for``)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: Any, message: Any) -> None:
        if _tracer is None:
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        options = message.options or {}
        payload = (message.kwargs or {}).get("payload")
        trace_id = trace_id_of(payload)
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.queue_name,
            "messaging.message.id": message.message_id,
            "shiftflow.actor": message.actor_name,
        }
        if isinstance(payload, Mapping):
            for key in ("execution_id", "workflow_id", "step_id", "iteration"):
                if payload.get(key) not in (None, ""):
                    attributes[f"shiftflow.{key}"] = payload[key]
        if trace_id is not None:
            attributes["shiftflow.execution_id"] = str(uuid.UUID(int=trace_id))
        parent = None
        if "traceparent" in options:
            parent = TraceContextTextMapPropagator().extract(
                {k: str(options[k]) for k in ("traceparent", "tracestate") if k in options})
        if parent is not None and trace.get_current_span(parent).get_span_context().is_valid:
            span = _tracer.start_span(message.actor_name, context=parent, kind=trace.SpanKind.CONSUMER,
                                      attributes=attributes)
        else:  # published without context (the timer loop): a root in the execution's trace
            span = _start(message.actor_name, trace_id, trace.SpanKind.CONSUMER, attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        self._local.current = (span, token)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        current = getattr(self._local, "current", None)
        if current is None:
            return
        self._local.current = None
        from opentelemetry import context as otel_context
        from opentelemetry.trace import Status, StatusCode

        span, token = current
        if exception is not None:
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        span.end()
        otel_context.detach(token)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self.after_process_message(broker, message)


# -- steps and tools ------------------------------------------------------------------------


def step_span(execution_id: Any, workflow_id: Any, step_id: str, step_type: str, status: str,
              *, duration_ms: Any = None, iteration: int = 0, error: Any = None) -> None:
    """Record the span of one step outcome (ending now, lasting ``duration_ms``)."""
    if _tracer is None or status not in FINAL_STEP_STATUSES:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    end = time.time_ns()
    duration = duration_ms if isinstance(duration_ms, int | float) and duration_ms > 0 else 0
    try:
        trace_id: int | None = uuid.UUID(str(execution_id)).int
    except ValueError:
        trace_id = None
    attributes = {"shiftflow.execution_id": str(execution_id), "shiftflow.workflow_id": str(workflow_id),
                  "shiftflow.step_id": step_id, "shiftflow.step_type": step_type,
                  "shiftflow.step_status": status, "shiftflow.iteration": int(iteration or 0)}
    span = _start(f"step {step_id}", trace_id, trace.SpanKind.INTERNAL, attributes,
                  start_time=end - int(duration * 1_000_000))
    if status in ("FAILED", "TIMED_OUT"):
        span.set_status(Status(StatusCode.ERROR, str(error or status)[:200]))
    span.end(end_time=end)


@contextmanager
def _tool_span(step_type: str, attributes: dict[str, Any]) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    with _tracer.start_as_current_span(f"tool {step_type}", kind=trace.SpanKind.CLIENT, attributes=attributes,
                                       record_exception=True, set_status_on_exception=False) as span:
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()


def tool_span(step_type: str, step_id: str, execution_id: Any) -> Any:
    """A context manager: the span of one outside call (nothing while tracing is off)."""
    if _tracer is None:
        return _NOTHING
    return _tool_span(step_type, {"shiftflow.step_type": step_type, "shiftflow.step_id": step_id,
                                  "shiftflow.execution_id": str(execution_id)})
