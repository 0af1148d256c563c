"""Slow, counting outside services for the tool-kill scenarios (``test_tool_sigkill.py``).

Each records every call it *receives* (on arrival, before it answers), keyed by the
execution id the workflow puts in it (``run-<uuid>``), and answers only after ``delay``
seconds, so a SIGKILL of the worker pool lands while calls are in flight. ``in_flight``
says how many calls are being answered right now. A call counts as an effect as soon as
it arrived: a caller killed before the answer may have caused it (the stricter count).

* ``SlowWeb``: one loopback HTTP server for ``http.request`` (``POST /effect``),
  ``notify.chat`` (``POST /hook``, a Slack-shaped webhook) and ``browser.screenshot``
  (``GET /page?run-<uuid>``).
* ``SlowSmtp``: aiosmtpd with STARTTLS and AUTH (``tests/tool_servers.py``) whose
  ``DATA`` records the message, then waits ``delay`` before its 250.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from tests.tool_servers import PageServer, SelfSigned, SmtpHandler, SmtpServer

from .checker import OutsideCall

#: How a call names its execution: ``run-<execution id>`` in its body, path or subject.
RUN_ID = re.compile(r"run-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")

PAGE = b"<html><body style='background:#07a'><h1>Slow page</h1></body></html>"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Arrivals:
    """Calls received per execution id, with their times; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, dt.datetime]] = []
        self.in_flight = 0

    def arrived(self, text: str) -> None:
        """Record the call whose ``text`` names ``run-<execution id>`` (others are ignored)."""
        found = RUN_ID.search(text)
        if found:
            with self._lock:
                self.calls.append((found.group(1), _now()))

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def per_execution(self) -> Counter[str]:
        """How many calls each execution made."""
        with self._lock:
            return Counter(execution for execution, _ in self.calls)

    def outside_calls(self, step_id: str) -> list[OutsideCall]:
        """The calls as the reliability checker reads them (all made by step ``step_id``)."""
        with self._lock:
            return [OutsideCall(execution, step_id, at) for execution, at in self.calls]


class SlowWeb:
    """A loopback HTTP server that records each call on arrival and answers after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrivals = Arrivals()
        self.server = PageServer({
            "/effect": self._answer(200, "application/json", b'{"ok": true}'),
            "/hook": self._answer(200, "text/plain", b"ok"),
            "/page": self._answer(200, "text/html", PAGE),
        })
        self.url = self.server.url

    def _answer(self, status: int, mime: str, body: bytes) -> Any:
        def route(handler: Any) -> tuple[int, dict[str, str], bytes]:
            self.arrivals.arrived(handler.path + " " + handler.body.decode(errors="replace"))
            self.arrivals.enter()
            try:
                time.sleep(self.delay)
            finally:
                self.arrivals.leave()
            return status, {"Content-Type": mime}, body

        return route

    def close(self) -> None:
        """Stop serving."""
        self.server.close()


@dataclass
class SlowSmtpHandler(SmtpHandler):
    """Records each message when its body has arrived, then sits on it before the 250."""

    arrivals: Arrivals = field(default_factory=Arrivals)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        message = message_from_bytes(envelope.content, policy=default_policy)
        self.arrivals.arrived(str(message["Subject"]))
        self.arrivals.enter()
        try:
            await asyncio.sleep(self.data_delay)
        finally:
            self.arrivals.leave()
        self.messages.append((envelope, message))
        return "250 Message accepted for delivery"


class SlowSmtp:
    """aiosmtpd (STARTTLS, AUTH) whose ``DATA`` answers after ``delay``."""

    def __init__(self, cert: SelfSigned, delay: float) -> None:
        self.cert = cert
        self.handler = SlowSmtpHandler(data_delay=delay)
        self.arrivals = self.handler.arrivals
        self.server = SmtpServer(cert, self.handler)

    def credentials(self) -> dict[str, Any]:
        """The ``smtp`` connection's credentials for this server."""
        return self.server.credentials(self.cert)

    def close(self) -> None:
        """Stop the server."""
        self.server.stop()
