"""Message contracts: actor and queue names as data, and one payload dataclass per actor.

Producers enqueue by name (``send("triggers.start", TriggerPayload(...))``) and never
import actors; a contract test checks that every name declared here has an actor.
Payloads are small and JSON-able, carry ids rather than rows, and gain fields only
with defaults so that messages already on a queue still decode.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar


class Queue:
    """Queue names. Each can be consumed by its own worker pool (deploy/pools.yaml)."""

    TRIGGERS = "triggers"
    STEPS = "steps"
    TOOLS = "tools"
    TOOLS_BROWSER = "tools.browser"
    TOOLS_MEDIA = "tools.media"
    TOOLS_EMAIL = "tools.email"
    LLM = "llm"
    SIDESHIFT = "sideshift"

    ALL = (TRIGGERS, STEPS, TOOLS, TOOLS_BROWSER, TOOLS_MEDIA, TOOLS_EMAIL, LLM, SIDESHIFT)

    #: The actor that runs a tool step on each per-kind queue (a tool declares its queue).
    TOOL_ACTORS = {TOOLS: "tools.call", TOOLS_EMAIL: "tools.email", TOOLS_BROWSER: "tools.browser",
                   TOOLS_MEDIA: "tools.media"}


class Priority(IntEnum):
    """Execution priorities mapped onto RabbitMQ message priority."""

    LOW = 1
    NORMAL = 3
    HIGH = 6
    CRITICAL = 9

    @classmethod
    def parse(cls, name: str | None) -> Priority:
        """Map a priority name (any case) to its value; NORMAL when empty."""
        if not name:
            return cls.NORMAL
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {name!r}: expected LOW, NORMAL, HIGH or CRITICAL") from None


#: Longest dedup key an execution can store (``execution.dedup_key`` is varchar(255)).
MAX_DEDUP_KEY = 255

#: RabbitMQ x-max-priority on every queue; must be >= the highest Priority.
MAX_PRIORITY = 10

#: Follow-on steps of running executions go ahead of first steps of new ones
#: (a FIFO queue finishes a burst breadth-first: docs/architecture.md#messages-queues-and-pools).
#: Added to the base priority.
FOLLOW_ON_BOOST = 1


#: Namespace of execution ids (``execution_id_for``); fixed forever, or ids change meaning.
EXECUTION_NAMESPACE = uuid.UUID("6b1f3c52-6c0e-4d7a-9a43-2f0d5c1e8b71")


def execution_id_for(workflow_id: Any, dedup_key: str) -> uuid.UUID:
    """The id the execution of ``(workflow, dedup key)`` gets when a worker creates it.

    Derived (UUID 5), not drawn, so a producer can answer 202 with the id before the
    execution exists, and a retried delivery (same key) names the same execution.
    """
    # One spelling of the workflow id (SQLite rows hold 32 hex digits, PostgreSQL dashes).
    canonical = workflow_id if isinstance(workflow_id, uuid.UUID) else uuid.UUID(str(workflow_id))
    return uuid.uuid5(EXECUTION_NAMESPACE, f"{canonical}\n{dedup_key}")


#: Where an execution came from (``Execution.source``; ``TriggerPayload.source``).
EXECUTION_SOURCES = ("webhook", "schedule", "polling", "manual", "event", "workflow", "rerun")


@dataclass(frozen=True)
class TriggerPayload:
    """``triggers.start``: start (once) an execution of a workflow for one delivery."""

    workflow_id: str
    dedup_key: str
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0
    priority: str = "NORMAL"
    #: Set when a ``workflow`` step starts this execution as a sub-workflow.
    parent_execution_id: str = ""
    parent_step_id: str = ""
    parent_iteration: int = 0
    #: The user who started it by hand (manual triggers), recorded on the execution.
    triggered_by: str = ""


@dataclass(frozen=True)
class StepPayload:
    """``steps.run``, ``tools.*`` and ``llm.call``: run one step of one execution (idempotent)."""

    execution_id: str
    step_id: str
    iteration: int = 0


@dataclass(frozen=True)
class ActorSpec:
    """An actor's name, queue and payload type, declared once."""

    name: str
    queue: str
    payload: type
    doc: str


ACTORS: dict[str, ActorSpec] = {
    spec.name: spec
    for spec in (
        ActorSpec("triggers.start", Queue.TRIGGERS, TriggerPayload, "create the execution once, enqueue first steps"),
        ActorSpec("steps.run", Queue.STEPS, StepPayload, "run a cheap step (condition, transform)"),
        ActorSpec("tools.call", Queue.TOOLS, StepPayload, "run a step that calls an outside tool (HTTP, chat)"),
        ActorSpec("tools.email", Queue.TOOLS_EMAIL, StepPayload, "run a tool step whose tool sends email (SMTP)"),
        ActorSpec("tools.browser", Queue.TOOLS_BROWSER, StepPayload,
                  "run a tool step whose tool drives the headless browser"),
        ActorSpec("tools.media", Queue.TOOLS_MEDIA, StepPayload, "run a tool step whose tool converts media"),
        ActorSpec("llm.call", Queue.LLM, StepPayload,
                  "run an llm step (a model call through a connection) or an agent task's planner"),
        ActorSpec("sideshift.order", Queue.SIDESHIFT, StepPayload,
                  "run a SideShift swap step: place its order once, or poll it when its timer fires"),
        ActorSpec("sideshift.poll", Queue.SIDESHIFT, StepPayload, "poll an order that no active step follows"),
    )
}

P = TypeVar("P")


def encode(payload: Any) -> dict[str, Any]:
    """Turn a payload dataclass into the JSON-able kwargs of a message.

    A shallow copy: ``dataclasses.asdict`` deep-copies the trigger data, a large part of
    the ingress's CPU per webhook (docs/benchmarks.md#ingress-cpu); the message is
    encoded at once, so sharing is safe.
    """
    names = _FIELD_NAMES.get(type(payload))
    if names is None:
        # dataclasses.fields filters every attribute of the class on each call: once per type.
        names = _FIELD_NAMES[type(payload)] = tuple(f.name for f in dataclasses.fields(payload))
    return {name: getattr(payload, name) for name in names}


#: Field names of each payload class ``encode`` has seen.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def decode(cls: type[P], data: dict[str, Any]) -> P:
    """Build a payload from message kwargs, ignoring fields a newer producer added.

    Unknown keys are dropped (forward compatibility); missing keys take their defaults
    (backward compatibility).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})
