"""Producers: thin processes that turn outside events into trigger messages.

Webhook ingress, scheduler and manual/API triggers verify a request, give it a
deduplication key, publish a trigger by actor name and answer once the broker
confirmed. They import only ``shiftflow.kernel`` and ``shiftflow.models``, never
actors or consumers (docs/architecture.md#layers; import-linter enforces it).
"""
