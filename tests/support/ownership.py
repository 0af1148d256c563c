"""Marks on what a test session makes, and recognising what a killed session left behind.

Every database comment, vhost description and Redis lease a session makes carries
``OWNER`` (host and pid), so ``is_orphan`` can tell leftovers of a session whose process
is gone from those of a session still running.
"""

from __future__ import annotations

import os
import secrets
import socket

#: Written into every database comment, vhost description and lease this session makes,
#: so leftovers of a killed session can be recognised and reaped.
OWNER = f"shiftflow-test host={socket.gethostname()} pid={os.getpid()}"


def token() -> str:
    """A short random name part (12 hex digits)."""
    return secrets.token_hex(6)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphan(mark: str | None) -> bool:
    """True for an ``OWNER`` mark of a test session on this host whose process is gone."""
    mark = mark or ""
    fields = dict(f.split("=", 1) for f in mark.split()[1:] if "=" in f)
    if not mark.startswith("shiftflow-test") or fields.get("host") != socket.gethostname():
        return False
    pid = fields.get("pid", "")
    return pid.isdigit() and not _pid_alive(int(pid))
