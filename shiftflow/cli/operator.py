"""What the operator commands share: the CLI caller, usage errors naming the flag, times.

The operator CLI talks to the database directly with the same command and query
functions the management API calls, acting as ``Principal.operator`` (every
permission; on one workspace with ``--workspace``, else on all). Its audit entries say
``via: cli`` and carry the local user and host as the user agent.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import getpass
import json
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

from shiftflow.cli.main import bind, settings_from_args
from shiftflow.kernel.settings import Settings
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import InvalidInput

#: Model field names -> the flag or argument a person typed.
FLAGS = {
    "input": "--input",
    "priority": "--priority",
    "Idempotency-Key": "--idempotency-key",
    "name": "--name",
    "scopes": "--scopes",
    "expires_at": "--expires-at",
    "role": "--role",
    "email": "EMAIL",
    "slug": "SLUG",
    "since": "--since",
    "until": "--until",
    "limit": "--limit",
    "ids": "--id",
    "key": "KEY",
    "user": "--user",
    "status": "--status",
    "execution": "EXECUTION",
    "result": "--result",
    "reason": "--reason",
    "state": "--state",
    "outcome": "--done/--failed/--retry",
}

_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def usage_error(field: str, message: str) -> int:
    """Print ``shiftflow: --flag: message`` to stderr; exit code 2."""
    print(f"shiftflow: {FLAGS.get(field, field)}: {message}", file=sys.stderr)
    return 2


def guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; a bad field becomes exit 2 naming the flag (other errors: ``main``, exit 1)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except InvalidInput as exc:
            return usage_error(exc.field, exc.reason)

    run.__doc__ = func.__doc__
    return run


def connect(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the database bound and (when configured) a MongoDB
    log sink that is flushed when the command exits: commands write execution logs too."""
    from shiftflow.kernel.mongo import MongoSink, configure_sink, get_sink

    settings = settings_from_args(args)
    bind(settings)
    if settings.mongo_url and get_sink() is None:
        sink = MongoSink(settings.mongo_url, settings.mongo_db)
        configure_sink(sink)
        atexit.register(sink.close, 5)
    return settings


def operator(args: argparse.Namespace) -> Principal:
    """The CLI caller: on ``--workspace`` when given (it must exist), else on every workspace."""
    from shiftflow.models.manage import workspaces

    slug = getattr(args, "workspace", None)
    workspace_id = workspaces.by_slug(slug).id if slug else None
    return Principal.operator(
        workspace_id, user_agent=f"shiftflow-cli ({getpass.getuser()}@{socket.gethostname()})"
    )


def when(value: str | None, field: str) -> str | None:
    """``--since``/``--until``: an ISO timestamp, or a time ago (``30m``, ``2h``, ``7d``).

    Raises:
        InvalidInput: neither.
    """
    if value is None:
        return None
    match = _RELATIVE.match(value.strip())
    if match:
        ago = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (dt.datetime.now(dt.UTC) - ago).isoformat()
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            field, f"{value!r} is neither a timestamp (2025-01-31T12:00Z) nor an age (30m, 2h, 7d)"
        ) from None
    return value


def json_object(text: str, flag: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line.

    Raises:
        InvalidInput: not JSON, or not an object.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(flag, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(flag, "expected a JSON object, e.g. '{\"amount\": 42}'")
    return data


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    print(json.dumps(data, indent=2, default=str))
