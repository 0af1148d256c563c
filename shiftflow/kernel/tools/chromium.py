"""Headless Chromium for the browser tools: one process reused across calls, recycled, guarded.

``Chromium`` is one browser process (Debian's ``chromium`` package, never a downloaded
build) driven over ``--remote-debugging-pipe`` (``cdp.py``). Each call gets a fresh
browser context (its own cookies and storage) with one page, disposed at the end.

Guard. Unless private addresses are allowed, two layers apply the HTTP tool's
``check_destination``. The browser's own session enables ``Fetch`` interception for every
request of every context: page, iframes (also cross-origin ones in other processes),
workers and redirects; a refused one fails with ``BlockedByClient`` and the call's error
says why. Under it, every connection the browser opens goes through a loopback SOCKS5
proxy (``egress.py``) that refuses the same destinations: this catches what the DevTools
protocol does not intercept, WebSocket handshakes, and WebRTC is kept to proxied traffic.

Memory. ``--js-flags=--max-old-space-size`` caps V8's heap per page; after each call the
pool sums the memory of the browser's whole process tree (proportional set sizes, so the
libraries every Chromium process maps are counted once) and recycles it above the ceiling. It is also recycled after ``max_calls`` calls and when it crashed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shiftflow.kernel.errors import PermanentError, ShiftFlowError, ToolError, ToolUnavailable
from shiftflow.kernel.tools.cdp import BrowserGone, CdpConnection, CommandTimeout
from shiftflow.kernel.tools.egress import EgressProxy

#: Decides whether the browser may request a URL: returns, or raises ``ToolError``.
Guard = Callable[[str], None]

#: Flags every browser starts with. Without the background-networking ones Chromium
#: keeps calling home (updates, sync, safe browsing), which a closed network floods with
#: failing connections.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter,OptimizationHints,InterestFeedContentSuggestions",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",
    "--remote-debugging-pipe",
)

# Navigation errors a retry cannot fix; any other net:: error is treated as transient.
_PERMANENT_NET_ERRORS = ("ERR_BLOCKED_BY_CLIENT", "ERR_INVALID_URL", "ERR_UNSAFE_", "ERR_DISALLOWED_URL_SCHEME",
                         "ERR_CERT_", "ERR_SSL_", "ERR_BAD_SSL", "ERR_INVALID_RESPONSE", "ERR_ABORTED")


def _memory_of(pid: int) -> int:
    """Proportional resident bytes of one process (shared pages split among their users),
    or its plain resident size where ``smaps_rollup`` is missing (an overestimate)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _tree_memory(root: int) -> int:
    """Memory of ``root`` and all its descendants (Chromium's zygotes, renderers, GPU and
    network services). Proportional set sizes, so shared libraries are counted once."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        total += _memory_of(pid)
    return total


class Chromium:
    """One headless Chromium process and its DevTools connection.

    Parameters:
        path: the binary (``SHIFTFLOW_CHROMIUM_PATH``).
        guard: called with each request's URL; None lets everything through (no interception).
        js_heap_mb: V8's old-space ceiling per page.
        start_timeout: how long to wait for the browser to answer its first command.
    """

    def __init__(self, path: str, *, guard: Guard | None, js_heap_mb: int = 256, start_timeout: float = 30.0) -> None:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise PermanentError(f"chromium not found at {path!r} (SHIFTFLOW_CHROMIUM_PATH; apt-get install chromium)")
        self.path = path
        self.guard = guard
        self.calls = 0
        self.in_use = 0
        self.retiring = False
        self._blocked: dict[str, str] = {}  # frame id -> why its last request was refused
        self._reaped = False
        self._close_lock = threading.Lock()
        self._user_dir = tempfile.mkdtemp(prefix="shiftflow-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Chromium wants the pipe on descriptors 3 and 4 exactly. bash moves them there
        # just before exec (a preexec_fn would do it in Python after fork, which is unsafe
        # in a threaded worker); copies above 10 cannot collide with 3 and 4 (dash, unlike
        # bash, refuses descriptors above 9).
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        self._stderr_path = Path(self._user_dir) / "stderr.log"
        self.proxy = EgressProxy(guard) if guard is not None else None
        routing = [
            f"--proxy-server={self.proxy.url}",
            "--proxy-bypass-list=<-loopback>",  # Chromium bypasses proxies for loopback unless told not to
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        ] if self.proxy else ["--no-proxy-server"]
        args = [path, *BASE_FLAGS, *routing, f"--js-flags=--max-old-space-size={js_heap_mb}",
                f"--user-data-dir={self._user_dir}/profile"]
        script = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        try:
            with self._stderr_path.open("wb") as stderr:
                self.process = subprocess.Popen(
                    ["/bin/bash", "-c", script, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    # Its own process group: close() can stop the zygote and renderers too.
                    start_new_session=True,
                    pass_fds=(child_r, child_w),
                )
        except OSError as exc:  # no bash, no memory for a fork...: nothing started, nothing kept
            for fd in (to_browser_w, from_browser_r):
                os.close(fd)
            if self.proxy is not None:
                self.proxy.close()
            shutil.rmtree(self._user_dir, ignore_errors=True)
            raise ToolUnavailable(f"chromium could not be started: {exc}") from None
        finally:
            os.close(child_r)
            os.close(child_w)
        self.cdp = CdpConnection(to_browser_w, from_browser_r)
        self._guard_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chromium-guard") if guard else None
        try:
            self.version = self.cdp.send("Browser.getVersion", timeout=start_timeout)["product"]
            if guard is not None:
                self.cdp.listen("", self._on_browser_event)
                self.cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]})
        except ShiftFlowError as exc:
            tail = self._stderr_tail()
            self.close()
            raise ToolUnavailable(f"chromium did not start: {exc}; stderr: {tail}") from None

    @property
    def pid(self) -> int:
        """The browser's process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """False once the process exited or its pipe closed."""
        return not self.cdp.closed.is_set() and self._running()

    def memory_bytes(self) -> int:
        """Memory of the browser and every process it started (see ``_tree_memory``)."""
        return _tree_memory(self.pid) if self.alive else 0

    def _stderr_tail(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")[-500:].strip() or "(empty)"
        except OSError:
            return "(unreadable)"

    # ------------------------------------------------------------------ guard

    def _on_browser_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Fetch.requestPaused" and self._guard_pool is not None:
            # A DNS lookup may take a while: decide off the reader thread.
            with contextlib.suppress(RuntimeError):  # pool shut down: the browser is closing
                self._guard_pool.submit(self._decide, params)

    def _decide(self, params: dict[str, Any]) -> None:
        url = params["request"]["url"]
        request_id = params["requestId"]
        scheme = urlsplit(url).scheme
        try:
            if scheme in ("http", "https") and self.guard is not None:
                self.guard(url)
            elif scheme not in ("data", "blob", "about"):
                raise ToolError(f"url {url[:200]!r}: only http and https are allowed")
        except ShiftFlowError as exc:
            if len(self._blocked) > 1000:
                self._blocked.clear()
            self._blocked[params.get("frameId", "")] = str(exc)
            self.cdp.send_nowait("Fetch.failRequest", {"requestId": request_id, "errorReason": "BlockedByClient"})
            return
        self.cdp.send_nowait("Fetch.continueRequest", {"requestId": request_id})

    def blocked_reason(self, frame_id: str) -> str | None:
        """Why the guard last refused a request of ``frame_id``, if it did."""
        return self._blocked.get(frame_id)

    def refused_by_proxy(self, host: str, port: int) -> str | None:
        """Why the egress proxy refused a connection to ``host:port``, if it did."""
        return self.proxy.refused.get(f"{host}:{port}") if self.proxy else None

    # ------------------------------------------------------------------ pages

    @contextlib.contextmanager
    def page(self, *, width: int, height: int, deadline: float) -> Iterator[Page]:
        """A fresh page in its own browser context, disposed on exit.

        Parameters:
            width / height: the viewport in CSS pixels.
            deadline: ``time.monotonic()`` value by which the call must end.
        """
        context_id = _until(self.cdp, deadline, "Target.createBrowserContext",
                            {"disposeOnDetach": True})["browserContextId"]
        try:
            target_id = _until(self.cdp, deadline, "Target.createTarget",
                               {"url": "about:blank", "browserContextId": context_id})["targetId"]
            session = _until(self.cdp, deadline, "Target.attachToTarget",
                             {"targetId": target_id, "flatten": True})["sessionId"]
            page = Page(self, session, target_id, deadline)
            try:
                page.setup(width, height)
                yield page
            finally:
                self.cdp.unlisten(session)
                self._blocked.pop(target_id, None)
        finally:
            if self.alive:
                with contextlib.suppress(ShiftFlowError):
                    self.cdp.send("Target.disposeBrowserContext", {"browserContextId": context_id}, timeout=5)

    # ------------------------------------------------------------------ stop

    def _running(self) -> bool:
        """True while the browser process has not exited, WITHOUT reaping it.

        The browser's id is also its process group's id, and ``close`` kills that group:
        as long as the leader is not reaped, the id cannot be reused by another process,
        so only ``close`` reaps it (``Popen.poll`` would, and then the group kill could
        hit an unrelated process that got the id).
        """
        if self._reaped:
            return False
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def close(self) -> None:
        """Stop the browser (politely, then its whole process group by id) and remove its profile.

        Safe to call more than once.
        """
        with self._close_lock:
            if self._reaped:
                return
            if self._running():
                with contextlib.suppress(ShiftFlowError):
                    self.cdp.send("Browser.close", timeout=2)
                deadline = time.monotonic() + 3
                while self._running() and time.monotonic() < deadline:
                    time.sleep(0.05)
            # The leader is not reaped yet, so its id still names only the group we started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            self._reaped = True
            self.cdp.close()
            if self._guard_pool is not None:
                self._guard_pool.shutdown(wait=False, cancel_futures=True)
            if self.proxy is not None:
                self.proxy.close()
            shutil.rmtree(self._user_dir, ignore_errors=True)


_PAGE_TIMEOUT = "the page did not finish within its timeout (SHIFTFLOW_BROWSER_PAGE_TIMEOUT_SECONDS)"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ToolUnavailable(_PAGE_TIMEOUT)
    return left


def _until(cdp: CdpConnection, deadline: float, method: str, params: dict[str, Any] | None = None,
           session: str = "") -> dict[str, Any]:
    """A command that must answer before the call's deadline (then: the page timeout error)."""
    try:
        return cdp.send(method, params, session=session, timeout=_left(deadline))
    except CommandTimeout:
        if time.monotonic() >= deadline:
            raise ToolUnavailable(_PAGE_TIMEOUT) from None
        raise


@dataclass
class Navigation:
    """What loading a URL gave: the final URL and the main document's HTTP status."""

    url: str
    status: int | None


class Page:
    """One page (a DevTools session) of a ``Chromium``; every command obeys the call's deadline."""

    def __init__(self, browser: Chromium, session: str, target_id: str, deadline: float) -> None:
        self.browser = browser
        self.session = session
        self.target_id = target_id
        self.deadline = deadline
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        browser.cdp.listen(session, self._on_event)

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.javascriptDialogOpening":  # an alert() would stall the page forever
            self.browser.cdp.send_nowait("Page.handleJavaScriptDialog", {"accept": False}, session=self.session)
            return
        self.events.put((method, params))

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command on this page, within the call's deadline."""
        return _until(self.browser.cdp, self.deadline, method, params, self.session)

    def setup(self, width: int, height: int) -> None:
        """Enable the domains the tools read and set the viewport."""
        self.send("Page.enable")
        self.send("Page.setLifecycleEventsEnabled", {"enabled": True})
        self.send("Network.enable", {"maxTotalBufferSize": 0, "maxResourceBufferSize": 0})
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url: str, *, wait_until: str = "load") -> Navigation:
        """Load ``url`` and wait for ``wait_until`` (``load``, ``domcontentloaded``, ``networkidle``).

        Raises:
            ToolError: the guard refused the page or a redirect, a bad certificate, a bad URL.
            ToolUnavailable: a network error, the page crashed, or the deadline passed.
        """
        answer = self.send("Page.navigate", {"url": url})
        error = answer.get("errorText")
        if error:
            why = self.browser.blocked_reason(self.target_id)
            if why and "BLOCKED_BY_CLIENT" in error:
                raise ToolError(f"navigation to {url} refused: {why}")
            parts = urlsplit(url)
            refused = self.browser.refused_by_proxy(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            if refused and ("SOCKS" in error or "PROXY" in error or "TUNNEL" in error):
                raise ToolError(f"navigation to {url} refused: {refused}")
            cls = ToolError if any(p in error for p in _PERMANENT_NET_ERRORS) else ToolUnavailable
            raise cls(f"navigation to {url} failed: {error}")
        loader = answer.get("loaderId")
        wanted = {"load": "load", "domcontentloaded": "DOMContentLoaded", "networkidle": "networkIdle"}[wait_until]
        status: int | None = None
        final = url
        while True:
            try:
                method, params = self.events.get(timeout=min(0.5, _left(self.deadline)))
            except queue.Empty:
                if not self.browser.alive:
                    raise BrowserGone("the browser exited while loading the page") from None
                continue
            if method == "Network.responseReceived" and params.get("type") == "Document" \
                    and params.get("frameId") == self.target_id:
                status = int(params["response"]["status"])
                final = params["response"]["url"]
            elif method == "Inspector.targetCrashed":
                raise ToolUnavailable(f"the page {url} crashed (out of memory?)")
            elif method == "Page.lifecycleEvent" and params.get("frameId") == self.target_id \
                    and params.get("name") == wanted and (loader is None or params.get("loaderId") == loader):
                return Navigation(final, status)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in answer:
            raise ToolError(f"page script failed: {answer['exceptionDetails'].get('text', '?')}")
        return answer.get("result", {}).get("value")


class BrowserPool:
    """One reusable ``Chromium`` at a time, shared by the threads of a worker process.

    A browser is recycled (a new one started for the next call, the old one closed when
    its last call ends) after ``max_calls`` calls, when its process tree's resident
    memory is above ``memory_mb`` after a call, and when it crashed.
    """

    def __init__(self, path: str, *, guard: Guard | None, max_calls: int = 100, memory_mb: int = 1024,
                 js_heap_mb: int = 256) -> None:
        self.path = path
        self.guard = guard
        self.max_calls = max_calls
        self.memory_bytes = memory_mb * 1024 * 1024
        self.js_heap_mb = js_heap_mb
        self._lock = threading.Lock()
        self._current: Chromium | None = None
        #: How many browsers this pool started (tests and metrics read it).
        self.started = 0

    @contextlib.contextmanager
    def browser(self) -> Iterator[Chromium]:
        """A live browser for one call."""
        with self._lock:
            if self._current is None or not self._current.alive:
                stale, self._current = self._current, None
                if stale is not None and stale.in_use == 0:
                    stale.close()
                self._current = Chromium(self.path, guard=self.guard, js_heap_mb=self.js_heap_mb)
                self.started += 1
            browser = self._current
            browser.in_use += 1
            browser.calls += 1
        try:
            yield browser
        finally:
            self._release(browser)

    def _release(self, browser: Chromium) -> None:
        with self._lock:
            browser.in_use -= 1
            if browser is self._current and (
                not browser.alive or browser.calls >= self.max_calls or browser.memory_bytes() > self.memory_bytes
            ):
                browser.retiring = True
                self._current = None
            done = (browser.retiring or not browser.alive) and browser.in_use == 0 and browser is not self._current
        if done:
            browser.close()

    def close(self) -> None:
        """Stop the current browser (at process exit, or in tests)."""
        with self._lock:
            browser, self._current = self._current, None
        if browser is not None:
            browser.close()
