"""Publishing from a CLI command: the messages a committed change made ready."""

from __future__ import annotations

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import TransientError
from shiftflow.kernel.settings import Settings


def publish_after_commit(settings: Settings, outgoing: list[Outgoing]) -> None:
    """Send the messages after the commit, or hand them to the timer loop.

    In dev mode, or when the broker cannot be reached, the timer loop publishes them (the
    rows are committed, so nothing is lost while the broker is away).
    """
    from shiftflow.models.manage import control

    if not outgoing:
        return
    if not settings.dev:
        from shiftflow.kernel.broker import build_broker, install
        from shiftflow.kernel.enqueue import send_all

        try:
            install(build_broker(settings, worker=False))
            send_all(outgoing)
            return
        except TransientError as exc:
            print(f"broker unavailable ({exc}); the timer loop will publish {len(outgoing)} message(s)", flush=True)
    control.defer_to_timers(outgoing)
