"""Confirmed publishes of ``triggers.start`` from the test process.

A key is *accepted* only once RabbitMQ confirmed it: the checker holds the engine to
exactly the accepted keys.
"""

from __future__ import annotations

from typing import Any


class Publisher:
    """Confirmed ``triggers.start`` publishes from the test process.

    ``accepted`` holds exactly the keys whose publish RabbitMQ confirmed.
    """

    def __init__(self, env: dict[str, str]) -> None:
        import dramatiq

        from shiftflow.kernel.broker import build_broker
        from shiftflow.kernel.settings import Settings

        self.broker = build_broker(Settings.from_env(env), worker=False)
        self._previous = dramatiq.broker.global_broker
        dramatiq.set_broker(self.broker)
        self.accepted: list[str] = []
        self.refused = 0

    def trigger(self, workflow_id: str, key: str, data: dict[str, Any]) -> bool:
        """Publish one trigger; True (and ``key`` accepted) once the broker confirmed it."""
        from shiftflow.kernel.contracts import TriggerPayload
        from shiftflow.kernel.enqueue import send
        from shiftflow.kernel.errors import BrokerUnavailable

        try:
            send("triggers.start", TriggerPayload(workflow_id, key, "test", data))
        except BrokerUnavailable:
            self.refused += 1
            return False
        self.accepted.append(key)
        return True

    def close(self) -> None:
        """Close the broker and put back the process's previous global broker."""
        import dramatiq

        self.broker.close()
        dramatiq.broker.global_broker = self._previous
