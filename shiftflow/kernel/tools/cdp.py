"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

Chromium started with ``--remote-debugging-pipe`` reads protocol messages on its file
descriptor 3 and writes them on descriptor 4, each a JSON text ended by a NUL byte. A
pipe rather than ``--remote-debugging-port``: no TCP port that any local process could
connect to and drive the browser with, no port to pick, and no websocket library.

One reader thread per connection parses messages: answers complete the caller's
``Future`` (matched by ``id``); events go to the subscribers of their session (``""``
is the browser's own session). Subscribers run ON the reader thread: they must not wait
for an answer (``send_nowait`` only), or the reader would wait for itself.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shiftflow.kernel.errors import ToolError, ToolUnavailable

Listener = Callable[[str, dict[str, Any]], None]


class CdpError(ToolError):
    """Raised when the browser answered a command with an error (bad parameters, no such target)."""


class CommandTimeout(ToolUnavailable):
    """Raised when the browser did not answer a command in time."""


class BrowserGone(ToolUnavailable):
    """Raised when the browser's pipe closed (it exited or crashed) before an answer came."""


class CdpConnection:
    """One DevTools connection on two pipe descriptors (ours: write end, read end).

    Parameters:
        write_fd: our end of the browser's descriptor 3.
        read_fd: our end of the browser's descriptor 4.
    """

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ sending

    def _write(self, message: dict[str, Any]) -> None:
        data = memoryview(json.dumps(message, separators=(",", ":")).encode() + b"\0")
        with self._write_lock:
            if self._write_fd < 0:
                raise BrowserGone("browser pipe closed")
            try:
                while data:
                    written = os.write(self._write_fd, data)
                    data = data[written:]
            except OSError as exc:
                raise BrowserGone(f"browser pipe closed: {exc}") from None

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str = "",
             timeout: float = 10.0) -> dict[str, Any]:
        """Send a command and wait for its answer.

        Raises:
            CdpError: the browser answered with an error.
            BrowserGone: the browser exited first.
            CommandTimeout: no answer within ``timeout`` seconds.
        """
        if self.closed.is_set():
            raise BrowserGone("the browser has exited")
        ident = next(self._ids)
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._pending[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            self._write(message)
            answer = future.result(timeout=max(0.001, timeout))
        except FutureTimeout:
            raise CommandTimeout(f"browser did not answer {method} within {timeout:.1f} s") from None
        finally:
            with self._lock:
                self._pending.pop(ident, None)
        if "error" in answer:
            error = answer["error"]
            raise CdpError(f"{method}: {error.get('message', error)}")
        result: dict[str, Any] = answer.get("result") or {}
        return result

    def send_nowait(self, method: str, params: dict[str, Any] | None = None, *, session: str = "") -> None:
        """Send a command without waiting (its answer is dropped); for listeners."""
        if self.closed.is_set():
            return
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            self._write(message)
        except BrowserGone:
            pass  # the reader sees the same closed pipe and fails every waiting call

    # ------------------------------------------------------------------ events

    def listen(self, session: str, listener: Listener) -> None:
        """Call ``listener(method, params)`` for every event of ``session`` ("" = browser)."""
        with self._lock:
            self._listeners.setdefault(session, []).append(listener)

    def unlisten(self, session: str) -> None:
        """Drop every listener of ``session``."""
        with self._lock:
            self._listeners.pop(session, None)

    # ------------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                try:
                    chunk = os.read(self._read_fd, 1 << 20)
                except OSError:
                    break
                if not chunk:
                    break
                buffer += chunk
                while b"\0" in buffer:
                    raw, buffer = buffer.split(b"\0", 1)
                    self._dispatch(json.loads(raw))
        finally:
            # Only this thread reads the descriptor, so only it closes it: closed elsewhere,
            # the number could be reused by another file while this thread still reads it.
            try:
                os.close(self._read_fd)
            except OSError:
                pass
            self.closed.set()
            with self._lock:
                pending = list(self._pending.values())
            for future in pending:
                if not future.done():
                    future.set_exception(BrowserGone("the browser exited before answering"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                future = self._pending.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message)
            return
        with self._lock:
            listeners = list(self._listeners.get(message.get("sessionId", ""), ()))
        for listener in listeners:
            listener(message.get("method", ""), message.get("params") or {})

    def close(self, timeout: float = 5.0) -> None:
        """Close our write end (the browser reads EOF); wait for the reader to see the browser go.

        Call after the browser process has exited or been told to: the reader ends when the
        browser's end of the pipe closes.
        """
        with self._write_lock:
            if self._write_fd >= 0:
                try:
                    os.close(self._write_fd)
                except OSError:
                    pass
                self._write_fd = -1
        self._reader.join(timeout=timeout)
