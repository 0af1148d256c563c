"""The worker side: pool definitions, the module the ``dramatiq`` CLI loads, middleware
wiring, dead-letter handling and health."""
