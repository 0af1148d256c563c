"""Liveness and readiness: ``/healthz`` says the process serves, ``/readyz`` that it can work.

``/healthz`` answers 200 as long as the process answers HTTP at all: a supervisor
restarts a process whose liveness fails, and restarting does not bring a broker back.
``/readyz`` answers 200 only when what the process needs answers now (RabbitMQ, the
database) and 503 naming what does not, so a load balancer sends webhooks elsewhere
and an operator sees why. The ingress (with the management API) and each worker pool's
metrics exporter serve both.

The checks here are blocking and short (``CHECK_TIMEOUT_SECONDS``); callers on an event
loop run them in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: Longest a single readiness check may take before it counts as failed.
CHECK_TIMEOUT_SECONDS = 3.0
#: Seconds a sender (or a probe) should wait before asking again after a 503.
RETRY_AFTER_SECONDS = 5

#: A check: None when the dependency is usable, else why not (one line, no secret).
Check = Callable[[], str | None]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text and text[0] else type(exc).__name__


def database_problem(database: Any) -> str | None:
    """Why ``database`` (a bound Peewee database) cannot run ``SELECT 1`` now, or None."""
    import peewee
    from playhouse.pool import MaxConnectionsExceeded

    try:
        with database.connection_context():
            database.execute_sql("SELECT 1")
    except (peewee.PeeweeException, MaxConnectionsExceeded) as exc:
        return _reason(exc)
    return None


def broker_problem(url: str | Sequence[str]) -> str | None:
    """Why no AMQP connection to ``url`` (or to any of several, tried in order) can be opened
    now, or None (opens and closes one)."""
    import pika
    import pika.exceptions

    from shiftflow.kernel.broker import amqp_url_with_defaults

    addresses = []
    for one in [url] if isinstance(url, str) else url:
        params = pika.URLParameters(amqp_url_with_defaults(one))
        params.connection_attempts = 1
        params.socket_timeout = CHECK_TIMEOUT_SECONDS
        params.blocked_connection_timeout = CHECK_TIMEOUT_SECONDS
        addresses.append(params)
    try:
        connection = pika.BlockingConnection(addresses)
    except (pika.exceptions.AMQPError, OSError) as exc:
        return _reason(exc) if str(exc).strip() else f"{type(exc).__name__}: cannot connect"
    try:
        connection.close()
    except pika.exceptions.AMQPError:
        pass  # it opened: usable
    return None


def answer(results: Mapping[str, str | None]) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of ``/readyz`` for check results (name -> problem or None)."""
    checks = {name: problem or "ok" for name, problem in results.items()}
    failed = [f"{name}: {problem}" for name, problem in results.items() if problem]
    if failed:
        return 503, {"error": "not ready: " + "; ".join(failed), "checks": checks}
    return 200, {"status": "ready", "checks": checks}


def run_checks(checks: Mapping[str, Check]) -> dict[str, str | None]:
    """Run blocking checks one after the other (each catches the errors it expects)."""
    return {name: check() for name, check in checks.items()}
