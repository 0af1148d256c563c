"""Dramatiq actors, one module per family. Each is about ten lines: decode the payload,
call a plain function, publish what follows.

Actors are registered by name here and bound to a broker by ``declare(broker)``, so the
same actor functions serve a RabbitMQ worker pool, dev mode's in-process broker and the
tests' per-test brokers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from shiftflow.kernel.contracts import ACTORS

_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def actor(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the actor named ``name`` (declared in ``kernel.contracts.ACTORS``).

    Raises:
        KeyError: ``name`` is not declared in the contract table.
    """
    ACTORS[name]

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _FUNCTIONS[name] = fn
        return fn

    return register


def registered() -> dict[str, Callable[..., Any]]:
    """Every registered actor function by name (imports the actor modules)."""
    from shiftflow.actors import sideshift, steps, triggers  # noqa: F401 - importing registers them

    return dict(_FUNCTIONS)


def declare(broker: dramatiq.Broker) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare every actor on ``broker`` with its contract queue; return them by name."""
    out: dict[str, dramatiq.Actor[Any, Any]] = {}
    for name, fn in registered().items():
        spec = ACTORS[name]
        out[name] = dramatiq.Actor(fn, broker=broker, actor_name=name, queue_name=spec.queue, priority=0,
                                   options={})
    return out
