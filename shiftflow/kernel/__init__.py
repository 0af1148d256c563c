"""The kernel: settings, errors, contracts, pure workflow logic and infrastructure handles.

It imports only the standard library and third-party packages (docs/architecture.md#layers).
"""
