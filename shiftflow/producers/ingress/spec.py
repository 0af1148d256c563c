"""The webhook ingress's OpenAPI document, served at ``GET /openapi.json``.

It describes what senders and operators reach without an API key: ``POST /hooks/{token}``
(one of three signature schemes, chosen by the webhook endpoint), ``GET /healthz``
(liveness) and ``GET /readyz`` (readiness: RabbitMQ and the database). Prometheus metrics
are on a listener of their own, not here. The management API has its own document at
``/api/v1/openapi.json``.
A schemathesis test holds the ingress to this document (no 5xx, every status and body
as written here).
"""

from __future__ import annotations

from typing import Any

from shiftflow.producers.ingress.hooks import MAX_TOKEN_LENGTH

VERSION = "1.0.0"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "why, e.g. `no signature matched`"}},
}

_REASONS = {
    400: "malformed request: a bad Content-Length, or the client left before the body was complete",
    401: "a signature header is missing or malformed, no signature matched, or the timestamp is more "
    "than the tolerance (5 minutes by default) away from now",
    404: "no active webhook with this token (an unknown token, a disabled webhook, or a paused workflow)",
    413: "the body is larger than SHIFTFLOW_WEBHOOK_MAX_BODY_BYTES",
    415: "the body is not sent as application/json (or +json), or it is compressed",
    422: "the body is not a JSON object PostgreSQL can store (not JSON, not an object, NUL, nesting)",
    429: "the workspace's webhook quota is used up (the message names it): retry after the Retry-After "
    "seconds; nothing was queued",
    503: "RabbitMQ (or the webhook store) is unreachable or did not confirm in time, or the trigger "
    "queue is full: retry after the Retry-After seconds; the same delivery id makes no second execution",
}


#: ``/readyz``'s checks by name (``broker``, ``database``): ``ok`` or what is wrong.
_CHECKS = {"type": "object", "additionalProperties": {"type": "string"}}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _REASONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ShiftFlow webhook ingress",
        "version": VERSION,
        "description": "Signed webhooks in, trigger messages to RabbitMQ out. A `202` is sent only after "
        "RabbitMQ confirmed the trigger; anything that could still be lost is a `503`. Verification "
        "happens before any write or publish. The scheme is the webhook endpoint's: Standard Webhooks "
        "(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`, several entries for "
        "secret rotation), Stripe (`Stripe-Signature: t=...,v1=...`) or GitHub "
        "(`X-Hub-Signature-256: sha256=<hex>`, `X-GitHub-Delivery`).",
    },
    "paths": {
        "/hooks/{token}": {
            "post": {
                "operationId": "receiveWebhook",
                "summary": "Verify a signed webhook and publish its trigger; 202 once RabbitMQ confirmed",
                "security": [],
                "parameters": [
                    {
                        "name": "token",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": f"^[A-Za-z0-9_-]{{1,{MAX_TOKEN_LENGTH}}}$"},
                        "description": "the webhook endpoint's token (`shiftflow apply --webhook` prints it)",
                    },
                    _header("webhook-id", "Standard Webhooks: the delivery id (the dedup key)"),
                    _header("webhook-timestamp", "Standard Webhooks: Unix seconds"),
                    _header("webhook-signature", "Standard Webhooks: space-separated `v1,<base64>` entries"),
                    _header("Stripe-Signature", "Stripe: `t=<unix>,v1=<hex>[,v1=...]`"),
                    _header("X-Hub-Signature-256", "GitHub: `sha256=<hex>`"),
                    _header("X-GitHub-Delivery", "GitHub: the delivery id (the dedup key)"),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "description": "any JSON object: the trigger data"}
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "verified and durably queued",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status", "execution_id", "execution_key", "workflow_id"],
                                    "properties": {
                                        "status": {"const": "accepted"},
                                        "execution_id": {
                                            "type": "string",
                                            "format": "uuid",
                                            "description": "the id the execution has once a worker "
                                            "created it (`GET /api/v1/executions/{id}`)",
                                        },
                                        "execution_key": {
                                            "type": "string",
                                            "description": "`<scheme>:<delivery id>`: a repeated delivery "
                                            "gets the same key and no second execution",
                                        },
                                        "workflow_id": {"type": "string", "format": "uuid"},
                                    },
                                }
                            }
                        },
                    },
                    **{str(status): _error(status) for status in sorted(_REASONS)},
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the process serves HTTP (nothing it depends on is checked: see /readyz)",
                "security": [],
                "responses": {"200": {"description": "ok", "content": {"text/plain": {"schema": {"const": "ok"}}}}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: RabbitMQ (the publisher is connected) and the database answer now",
                "security": [],
                "responses": {
                    "200": {
                        "description": "ready: every check passed",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status", "checks"],
                                    "properties": {"status": {"const": "ready"}, "checks": _CHECKS},
                                }
                            }
                        },
                    },
                    "503": {
                        "description": "not ready: the error names each failed check (e.g. `broker: not "
                        "connected to RabbitMQ (down: ...)`); webhooks would be answered 503 meanwhile",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["error", "checks"],
                                    "properties": {"error": {"type": "string"}, "checks": _CHECKS},
                                }
                            }
                        },
                    },
                },
            }
        },
    },
    "components": {"schemas": {"Error": _ERROR}},
}
