"""Outside calls made by tool steps. Each call has its own socket timeout (docs/architecture.md#messages-queues-and-pools)."""
