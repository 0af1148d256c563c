"""The HTTP process: the webhook ingress and the management API in one Starlette app.

``shiftflow ingress`` serves this: ``POST /hooks/{token}`` and ``/healthz`` from
``producers.ingress.app``, and the management API under ``/api/v1`` (``producers.api.app``; its
OpenAPI document at ``/api/v1/openapi.json``). One process, one public port: both are
thin producers that verify, commit or publish, and answer. Its Prometheus ``/metrics``
is on a listener of its own (``SHIFTFLOW_INGRESS_METRICS_PORT``), not on this port.

The process also gets a MongoDB log sink for its lifetime (when ``SHIFTFLOW_MONGO_URL``
is set and none is installed yet): API commands such as cancel and re-run write
execution log documents like the workers do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from shiftflow.kernel.mongo import MongoSink, configure_sink, get_sink
from shiftflow.kernel.settings import Settings
from shiftflow.producers.api import app as api
from shiftflow.producers.api import spec
from shiftflow.producers.ingress import app as ingress


def create_app(
    settings: Settings, *, api_options: dict[str, Any] | None = None, **ingress_options: Any
) -> Starlette:
    """The ingress app with the management API mounted at ``/api/v1``.

    Parameters:
        settings: passed to both apps.
        api_options: keyword arguments of ``api.create_api`` (``send``, ``mongo``).
        ingress_options: keyword arguments of ``ingress.create_app`` (``publish``, ``lookup``...).

    Returns:
        One ASGI app; the ingress's lifespan (its publisher) runs as before, inside one
        that opens and closes the log sink.
    """
    app = ingress.create_app(settings, **ingress_options)
    app.mount(spec.PREFIX, api.create_api(settings, **(api_options or {})))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        owned = None
        if settings.mongo_url and get_sink() is None:
            owned = configure_sink(
                MongoSink(
                    settings.mongo_url,
                    settings.mongo_db,
                    batch_size=settings.log_batch_size,
                    flush_ms=settings.log_flush_ms,
                )
            )
        try:
            async with inner(instance) as state:
                yield state
        finally:
            if owned is not None:
                owned.close(timeout=5)
                configure_sink(None)

    app.router.lifespan_context = lifespan
    return app
