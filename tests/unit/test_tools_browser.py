"""The browser tools against pages served here, in Debian's headless Chromium: what a
page gives, the request guard (subresources, iframes, workers, redirects), the page
timeout, and the browser's reuse and recycling (after N calls, above the memory ceiling,
after a crash), with every browser process gone at the end."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import ToolError, ToolUnavailable
from shiftflow.kernel.tools import browser
from shiftflow.kernel.tools.base import ToolContext, ToolLimits
from shiftflow.kernel.tools.chromium import BrowserPool, Chromium
from tests.tool_servers import PageServer

CHROMIUM = "/usr/bin/chromium"
FETCH, SHOT, PDF = browser.TOOLS

if not os.access(CHROMIUM, os.X_OK):  # a fresh machine: `make test` installs it (scripts/ensure-tools.sh)
    pytest.fail(f"{CHROMIUM} is missing: run `make tools` (scripts/ensure-tools.sh)", pytrace=False)


def _html(body: str, title: str = "") -> tuple[int, dict[str, str], bytes]:
    page = f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()


def _slow(handler):
    time.sleep(4)
    return _html("late")


@pytest.fixture(scope="module")
def outside() -> Iterator[PageServer]:
    """The server the guard must keep pages away from (think: 169.254.169.254)."""
    server = PageServer({"/secret": _html("secret", "secret"), "/frame": _html("frame"),
                         "/img.png": (200, {"Content-Type": "image/png"}, b"")})
    yield server
    server.close()


@pytest.fixture(scope="module")
def site(outside) -> Iterator[PageServer]:
    worker = f"fetch('http://127.0.0.1:{outside.port}/from-worker').then(() => postMessage('reached'), () => postMessage('blocked'))"
    probe = f"""
      <img src="http://127.0.0.1:{outside.port}/img.png">
      <iframe src="http://localhost:{outside.port}/frame"></iframe>
      <script>
        window.results = {{}};
        fetch('http://127.0.0.1:{outside.port}/fetch').then(() => results.fetch = 'reached', () => results.fetch = 'blocked');
        new Worker('/worker.js').onmessage = (e) => results.worker = e.data;
        const ws = new WebSocket('ws://127.0.0.1:{outside.port}/ws');
        ws.onopen = () => results.ws = 'reached';
        ws.onerror = () => results.ws = 'failed';
      </script>"""
    server = PageServer({
        "/": _html("<style>html,body{margin:0;background:#ff0000}</style><h1>Hello page</h1><p>Second line</p>",
                   "Hello"),
        "/redirect": (302, {"Location": "/"}, b""),
        "/redirect-out": (302, {"Location": f"http://127.0.0.1:{outside.port}/secret"}, b""),
        "/probe": _html(probe, "probe"),
        "/worker.js": (200, {"Content-Type": "text/javascript"}, worker.encode()),
        "/big": _html("<p>" + "word " * 60_000 + "</p>", "big"),
        "/slow": _slow,
        "/missing-page": (404, {"Content-Type": "text/html"}, b"<title>nope</title>gone"),
    })
    yield server
    server.close()


@pytest.fixture(scope="module")
def started_groups() -> Iterator[list[int]]:
    """Process groups of every browser these tests start; none may survive the module."""
    groups: list[int] = []
    real_init = Chromium.__init__

    def tracking_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        groups.append(self.pid)

    Chromium.__init__ = tracking_init  # type: ignore[method-assign]
    yield groups
    Chromium.__init__ = real_init  # type: ignore[method-assign]
    browser.close_pools()
    # Not "some browser was started": pytest-xdist may run this module in more than one
    # stretch, each with its own instance of this fixture, and a stretch of tests that
    # refuse before starting a browser is right to start none (it failed that way in a
    # three-process run). The browsing tests check their own pages.
    assert _group_members(groups) == [], "browser processes outlived their pool"


def _group_members(groups: list[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) in groups:  # state, ppid, pgrp
                found.append(int(entry))
    return found


@pytest.fixture
def ctx(tmp_path, started_groups) -> ToolContext:
    return ToolContext(artifacts=LocalArtifactStore(tmp_path), allow_private=True,
                       limits=ToolLimits(page_timeout=30, max_text_bytes=2048))


def test_fetch_gives_final_url_status_title_and_text(site, ctx):
    out = FETCH.call({"url": f"{site.url}/redirect", "include_html": True}, ctx)
    assert out["url"] == f"{site.url}/" and out["status"] == 200 and out["title"] == "Hello"
    assert out["text"].split() == ["Hello", "page", "Second", "line"] and "<h1>Hello page</h1>" in out["html"]
    assert out["truncated"] is False
    missing = FETCH.call({"url": f"{site.url}/missing-page"}, ctx)
    assert missing["status"] == 404 and missing["title"] == "nope"
    # Two threads at once (a browser pool has 2 worker threads): two contexts of one browser.
    with ThreadPoolExecutor(2) as threads:
        big, again = threads.map(lambda path: FETCH.call({"url": site.url + path}, ctx), ["/big", "/"])
    assert big["truncated"] is True and len(big["text"].encode()) <= 2048 and again["title"] == "Hello"
    assert browser.pool_for(ctx).started == 1  # one browser served every call


def test_screenshot_and_pdf_are_artifacts(site, ctx):
    shot = SHOT.call({"url": site.url + "/", "width": 320, "height": 200}, ctx)
    ref = shot["artifact"]
    assert ref["mime"] == "image/png" and shot["status"] == 200
    image = Image.open(io.BytesIO(ctx.artifacts.get(ref["location"])))
    assert image.size == (320, 200) and image.getpixel((300, 190))[:3] == (255, 0, 0)
    full = SHOT.call({"url": f"{site.url}/big", "width": 320, "height": 200, "full_page": True,
                      "format": "jpeg"}, ctx)
    assert full["height"] > 200 and full["artifact"]["mime"] == "image/jpeg"
    pdf = PDF.call({"url": site.url + "/", "paper": "letter"}, ctx)
    data = ctx.artifacts.get(pdf["artifact"]["location"])
    assert data.startswith(b"%PDF-") and pdf["artifact"]["size"] == len(data)


def test_a_page_that_does_not_load_in_time_is_transient(site, tmp_path, started_groups):
    ctx = ToolContext(artifacts=LocalArtifactStore(tmp_path), allow_private=True, limits=ToolLimits(page_timeout=1.5))
    began = time.monotonic()
    with pytest.raises(ToolUnavailable, match="did not finish within its timeout"):
        FETCH.call({"url": f"{site.url}/slow"}, ctx)
    assert time.monotonic() - began < 4  # the page timeout ended the call, not the server's answer


def test_private_urls_are_refused_before_any_browser_starts(site, tmp_path):
    ctx = ToolContext(artifacts=LocalArtifactStore(tmp_path), allow_private=False)
    with pytest.raises(ToolError, match="not a public address"):
        FETCH.call({"url": site.url + "/"}, ctx)
    with pytest.raises(ToolError, match="only http and https"):
        SHOT.call({"url": "file:///etc/passwd"}, ctx)
    assert browser.pool_for(ctx).started == 0
    assert browser.pool_for(ctx).guard is browser._refuse_private  # the HTTP tool's check_destination, private refused


def test_the_guard_sees_every_request_of_every_frame_and_worker(site, outside, started_groups):
    """A page may not reach a refused address through a subresource, a cross-origin iframe
    (another renderer process), a fetch, a worker's fetch, a WebSocket or a redirect."""

    def refuse_outside(url: str) -> None:
        if urlsplit(url).port == outside.port:
            raise ToolError(f"url {url!r}: refused by the test guard")

    pool = BrowserPool(CHROMIUM, guard=refuse_outside)
    try:
        with pool.browser() as chromium, chromium.page(width=800, height=600, deadline=time.monotonic() + 30) as page:
            loaded = page.navigate(f"{site.url}/probe")
            assert loaded.status == 200
            deadline = time.monotonic() + 15  # positive signal: both scripts report their outcome
            while page.evaluate("Object.keys(window.results).length") < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert page.evaluate("window.results") == {"fetch": "blocked", "worker": "blocked", "ws": "failed"}
            # A failed handshake alone proves nothing (the outside server speaks no WebSocket):
            # the proxy's refusal and the outside server's empty log below do.
            assert any(key.endswith(f":{outside.port}") for key in chromium.proxy.refused)
        with pool.browser() as chromium, chromium.page(width=800, height=600, deadline=time.monotonic() + 30) as page:
            with pytest.raises(ToolError, match="refused by the test guard"):
                page.navigate(f"{site.url}/redirect-out")
    finally:
        pool.close()
    assert outside.hits == []  # the img and the iframe finished (blocked) before the load event
    assert site.hits.count("/probe") >= 1  # allowed traffic went through the proxy


def test_the_browser_is_recycled_after_a_crash_and_after_max_calls(site, started_groups):
    pool = BrowserPool(CHROMIUM, guard=None, max_calls=2)

    def call() -> Chromium:
        with pool.browser() as chromium, chromium.page(width=400, height=300, deadline=time.monotonic() + 30) as page:
            assert page.navigate(site.url + "/").status == 200
            return chromium

    try:
        crashed = call()
        os.kill(crashed.pid, signal.SIGKILL)  # a crash of the browser this pool started
        assert crashed.cdp.closed.wait(10)  # the pool's connection saw it go
        second = call()
        assert second is not crashed and pool.started == 2
        assert _group_members([crashed.pid]) == []  # its zygote and renderers were stopped too
        assert call() is second  # reused...
        assert second.retiring and second.process.poll() is not None  # ...until its 2nd call: then closed
        assert _group_members([second.pid]) == [] and pool.started == 2
    finally:
        pool.close()


def test_a_browser_over_the_memory_ceiling_is_recycled_after_the_call(site, started_groups):
    pool = BrowserPool(CHROMIUM, guard=None, memory_mb=64)  # below any real Chromium's footprint
    try:
        with pool.browser() as chromium, chromium.page(width=400, height=300, deadline=time.monotonic() + 30) as page:
            assert page.navigate(site.url + "/").status == 200
            assert chromium.memory_bytes() > 64 * 1024 * 1024
        # Measured after the call, over the ceiling: retired and closed, whole process group.
        assert chromium.retiring and chromium.process.poll() is not None
        assert _group_members([chromium.pid]) == []
    finally:
        pool.close()
