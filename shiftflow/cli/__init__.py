"""The ``shiftflow`` command. ``main`` holds the core commands; each further module adds a
group of subcommands through ``register(subparsers)`` (listed in ``main.COMMAND_MODULES``)."""

from shiftflow.cli.main import main

__all__ = ["main"]
