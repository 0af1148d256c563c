"""The HTTP process: the webhook ingress and the management API in one Starlette app.

``shiftflow ingress`` serves this: ``POST /hooks/{token}``, ``/healthz`` and ``/metrics``
from ``producers.ingress``, and the management API under ``/api/v1``
(``producers.api``; its OpenAPI document at ``/api/v1/openapi.json``). One process, one
port: both are thin producers that verify, commit or publish, and answer.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from shiftflow.kernel.settings import Settings
from shiftflow.producers import api, api_spec, ingress


def create_app(
    settings: Settings, *, api_options: dict[str, Any] | None = None, **ingress_options: Any
) -> Starlette:
    """The ingress app with the management API mounted at ``/api/v1``.

    Parameters:
        settings: passed to both apps.
        api_options: keyword arguments of ``api.create_api`` (``send``, ``mongo``).
        ingress_options: keyword arguments of ``ingress.create_app`` (``publish``, ``lookup``...).

    Returns:
        One ASGI app; the ingress's lifespan (its publisher) runs as before.
    """
    app = ingress.create_app(settings, **ingress_options)
    app.mount(api_spec.PREFIX, api.create_api(settings, **(api_options or {})))
    return app
