"""Local fakes of outside services, for tests and dev mode (paper trading).

Fakes may import ``shiftflow.kernel`` only, and only the CLI / dev mode may import
fakes (an import-linter contract in pyproject.toml enforces it). Import the fake you
need from its module, e.g. ``from shiftflow.fakes.sideshift import FakeSideShiftServer``;
this package imports nothing so that loading it costs nothing.
"""
