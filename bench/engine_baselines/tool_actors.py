"""Bare Dramatiq actors making the same library calls as ShiftFlow's tools.

Run by ``bench/bench_tool_steps.py`` as ``dramatiq bench.engine_baselines.tool_actors
--processes P --threads T`` with ``BENCH_*`` set. One actor per tool, on Dramatiq's
default queue, with Dramatiq's default middleware and no retries. Each message makes one
call of the library the tool wraps, the way ``bench/bench_tools.py``'s "direct" side does
(httpx, smtplib, Pillow, the same DevTools commands on the same Chromium), then records
the step as the other bare baselines do (``common.record``: one PostgreSQL transaction
inserting a ``bench_step`` row, one Mongo ``insert_one``). No schema check, no SSRF guard,
no artifact store, no effect ledger, no step state: the plainest way to run the call
from a queue.

Environment: ``BENCH_PG_URL``, ``BENCH_AMQP_URL``, ``BENCH_MONGO_URL``, ``BENCH_MONGO_DB``
(``common``), ``BENCH_HTTP_BASE`` (the loopback web server), ``BENCH_SMTP_PORT`` (the
loopback SMTP sink), ``BENCH_IMAGE`` (the source picture's path), ``BENCH_CHROMIUM``.
"""

from __future__ import annotations

import base64
import io
import os
import smtplib
import threading
import time
from email.message import EmailMessage
from typing import Any

import dramatiq
import httpx
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from PIL import Image

from bench.engine_baselines.common import env, record

broker = RabbitmqBroker(url=env("BENCH_AMQP_URL"))
dramatiq.set_broker(broker)

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _tls() -> Any:
    """One TLS context per process, as the HTTP tool keeps (``bench_tools.py`` explains why)."""
    with _lock:
        if "tls" not in _state:
            from shiftflow.kernel.tools.http import tls_context

            _state["tls"] = tls_context()
        return _state["tls"]


def _browsers() -> Any:
    """This process's Chromium pool, driven directly (no guard, no per-call bookkeeping)."""
    with _lock:
        if _state.get("browsers_pid") != os.getpid():
            from shiftflow.kernel.tools.browser import BrowserPool

            _state["browsers"] = BrowserPool(os.environ.get("BENCH_CHROMIUM", "/usr/bin/chromium"), guard=None,
                                             max_calls=10**9, memory_mb=65_536)
            _state["browsers_pid"] = os.getpid()
        return _state["browsers"]


def http_request() -> dict[str, Any]:
    """GET the loopback JSON endpoint."""
    answer = httpx.get(env("BENCH_HTTP_BASE") + "/json", timeout=10, verify=_tls())
    return {"status": answer.status_code, "json": answer.json()}


def notify_chat() -> dict[str, Any]:
    """POST a Slack-shaped message to the loopback webhook."""
    answer = httpx.post(env("BENCH_HTTP_BASE") + "/hook", json={"text": "bench"}, timeout=10, verify=_tls())
    return {"status": answer.status_code}


def email_send() -> dict[str, Any]:
    """Send the same two-part message with smtplib."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "bench@shiftflow.test", "ann@example.com", "bench"
    message.set_content("hello")
    message.add_alternative("<p>hello</p>", subtype="html")
    with smtplib.SMTP("127.0.0.1", int(env("BENCH_SMTP_PORT")), timeout=30) as smtp:
        smtp.send_message(message)
    return {"accepted": ["ann@example.com"]}


def media_image() -> dict[str, Any]:
    """Thumbnail the source picture (read from its file) with Pillow."""
    with open(env("BENCH_IMAGE"), "rb") as source, Image.open(io.BytesIO(source.read())) as image:
        image.thumbnail((200, 200))
        out = io.BytesIO()
        image.save(out, "PNG")
        return {"width": image.width, "height": image.height, "bytes": out.tell()}


def browser_screenshot() -> dict[str, Any]:
    """Load the loopback page and capture it, with the same DevTools commands as the tool."""
    with _browsers().browser() as chromium, chromium.page(width=1280, height=800,
                                                          deadline=time.monotonic() + 60) as page:
        page.navigate(env("BENCH_HTTP_BASE") + "/page")
        data = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])
    return {"bytes": len(data)}


CALLS = {
    "http.request": http_request,
    "notify.chat": notify_chat,
    "email.send": email_send,
    "media.image": media_image,
    "browser.screenshot": browser_screenshot,
}


@dramatiq.actor(max_retries=0)
def call_tool(tool: str, run_id: str, phase: str, triggered_at: float) -> None:
    """Make ``tool``'s library call, then record the step (the execution is done)."""
    record(run_id, 3, phase, triggered_at, CALLS[tool]())
