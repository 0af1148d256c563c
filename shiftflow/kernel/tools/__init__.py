"""Outside calls made by tool steps. Each call has its own socket timeout (DESIGN.md 3)."""
