"""``browser.fetch``, ``browser.screenshot``, ``browser.pdf``: a page loaded in headless Chromium.

Each call checks the URL with the HTTP tool's guard first, then loads it in a fresh
context of the worker's shared browser (``chromium.py``: reused, recycled, every request
guarded). The call's whole life, load included, is bounded by the page timeout.

* ``browser.fetch`` -> final URL, HTTP status, title, visible text and, if asked, the HTML
  (each cut at the text limit, ``truncated`` says so).
* ``browser.screenshot`` -> a PNG/JPEG/WebP artifact (viewport or full page, pixel-capped).
* ``browser.pdf`` -> a PDF artifact.
"""

from __future__ import annotations

import atexit
import base64
import threading
import time
from typing import Any

from shiftflow.kernel.errors import LimitExceeded
from shiftflow.kernel.tools.base import ARTIFACT_OUTPUT, Tool, ToolContext
from shiftflow.kernel.tools.chromium import BrowserPool, Guard, Page
from shiftflow.kernel.tools.http import check_destination

_POOLS: dict[tuple[Any, ...], BrowserPool] = {}
_POOLS_LOCK = threading.Lock()
#: The tallest full-page screenshot taken, CSS pixels (a page can be endless).
MAX_PAGE_HEIGHT = 16_384


def _refuse_private(url: str) -> None:
    """The browser's guard: the HTTP tool's address check, private addresses refused."""
    check_destination(url, allow_private=False)


def pool_for(ctx: ToolContext) -> BrowserPool:
    """The process's browser pool for this call's settings and address policy."""
    settings = ctx.settings
    path = settings.chromium_path if settings else "/usr/bin/chromium"
    max_calls = settings.browser_max_calls if settings else 100
    memory_mb = settings.browser_memory_mb if settings else 1024
    heap_mb = settings.browser_js_heap_mb if settings else 256
    key = (path, ctx.allow_private, max_calls, memory_mb, heap_mb)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            guard: Guard | None = None if ctx.allow_private else _refuse_private
            pool = _POOLS[key] = BrowserPool(path, guard=guard, max_calls=max_calls, memory_mb=memory_mb,
                                              js_heap_mb=heap_mb)
        return pool


@atexit.register
def close_pools() -> None:
    """Stop every browser this process started (at exit, and in tests)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


def _load(params: dict[str, Any], ctx: ToolContext, action: Any) -> Any:
    """Check the URL, open a page, load it, and run ``action(page, navigation)``."""
    url = params["url"]
    check_destination(url, allow_private=ctx.allow_private)
    deadline = time.monotonic() + min(float(params.get("timeout") or ctx.limits.page_timeout), ctx.limits.page_timeout)
    with pool_for(ctx).browser() as browser, browser.page(
        width=params.get("width", 1280), height=params.get("height", 800), deadline=deadline
    ) as page:
        navigation = page.navigate(url, wait_until=params.get("wait_until", "load"))
        return action(page, navigation)


def _cut(text: str, max_bytes: int) -> tuple[str, bool]:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


def fetch(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Load a page and return what a reader sees (the ``browser.fetch`` tool)."""
    cap = ctx.limits.max_text_bytes

    def read(page: Page, navigation: Any) -> dict[str, Any]:
        # Cut inside the page: an enormous page must not cross the pipe whole.
        title = page.evaluate("document.title") or ""
        # One character more than the cap: a text of exactly ``cap`` is not reported as cut.
        text, text_cut = _cut(page.evaluate(f"(document.body ? document.body.innerText : '').slice(0, {cap + 1})") or "", cap)
        out = {"url": navigation.url, "status": navigation.status, "title": title[:1000], "text": text,
               "truncated": text_cut}
        if params.get("include_html"):
            html, html_cut = _cut(page.evaluate(f"document.documentElement.outerHTML.slice(0, {cap + 1})") or "", cap)
            out["html"] = html
            out["truncated"] = text_cut or html_cut
        return out

    result: dict[str, Any] = _load(params, ctx, read)
    return result


def screenshot(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Load a page and store a picture of it as an artifact (the ``browser.screenshot`` tool)."""
    fmt = params.get("format", "png")

    def shoot(page: Page, navigation: Any) -> dict[str, Any]:
        capture: dict[str, Any] = {"format": fmt}
        if fmt != "png":
            capture["quality"] = params.get("quality", 80)
        width, height = params.get("width", 1280), params.get("height", 800)
        if params.get("full_page"):
            size = page.send("Page.getLayoutMetrics")["cssContentSize"]
            width, height = int(size["width"]) or width, min(int(size["height"]) or height, MAX_PAGE_HEIGHT)
            capture.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        if width * height > ctx.limits.max_pixels:
            raise LimitExceeded(
                f"screenshot of {width}x{height} pixels is over the limit of {ctx.limits.max_pixels} "
                "(SHIFTFLOW_MEDIA_MAX_PIXELS)"
            )
        data = base64.b64decode(page.send("Page.captureScreenshot", capture)["data"])
        name = params.get("name") or f"screenshot.{fmt}"
        ref = ctx.artifacts.put(data, name, f"image/{fmt}")
        return {"url": navigation.url, "status": navigation.status, "width": width, "height": height,
                "artifact": ref.to_dict()}

    result: dict[str, Any] = _load(params, ctx, shoot)
    return result


_PAPER = {"a4": (8.27, 11.69), "letter": (8.5, 11.0), "legal": (8.5, 14.0), "a3": (11.69, 16.54)}


def pdf(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Load a page and store it printed to PDF as an artifact (the ``browser.pdf`` tool)."""

    def print_(page: Page, navigation: Any) -> dict[str, Any]:
        paper_w, paper_h = _PAPER[params.get("paper", "a4")]
        answer = page.send("Page.printToPDF", {
            "landscape": bool(params.get("landscape", False)),
            "printBackground": bool(params.get("background", True)),
            "paperWidth": paper_w,
            "paperHeight": paper_h,
        })
        data = base64.b64decode(answer["data"])
        ref = ctx.artifacts.put(data, params.get("name") or "page.pdf", "application/pdf")
        return {"url": navigation.url, "status": navigation.status, "artifact": ref.to_dict()}

    result: dict[str, Any] = _load(params, ctx, print_)
    return result


_PAGE = {
    "url": {"type": "string", "minLength": 1, "maxLength": 8192},
    "wait_until": {"enum": ["load", "domcontentloaded", "networkidle"]},
    "timeout": {"type": "number", "exclusiveMinimum": 0},
    "width": {"type": "integer", "minimum": 100, "maximum": 4096},
    "height": {"type": "integer", "minimum": 100, "maximum": 4096},
}
_LOADED = {"url": {"type": "string"}, "status": {"type": ["integer", "null"]}}

TOOLS = [
    Tool(
        name="browser.fetch",
        description="Load a page in headless Chromium and return its final URL, status, title and text.",
        category="browser",
        queue="tools.browser",
        effect="repeatable",
        params_schema={"type": "object", "required": ["url"], "additionalProperties": False,
                       "properties": {**_PAGE, "include_html": {"type": "boolean"}}},
        result_schema={"type": "object", "required": ["url", "status", "title", "text", "truncated"],
                       "properties": {**_LOADED, "title": {"type": "string"}, "text": {"type": "string"},
                                      "html": {"type": "string"}, "truncated": {"type": "boolean"}}},
        run=fetch,
    ),
    Tool(
        name="browser.screenshot",
        description="Load a page in headless Chromium and store a screenshot of it as an artifact.",
        category="browser",
        queue="tools.browser",
        effect="repeatable",
        params_schema={"type": "object", "required": ["url"], "additionalProperties": False,
                       "properties": {**_PAGE, "full_page": {"type": "boolean"},
                                      "format": {"enum": ["png", "jpeg", "webp"]},
                                      "quality": {"type": "integer", "minimum": 1, "maximum": 100},
                                      "name": {"type": "string", "minLength": 1, "maxLength": 200}}},
        result_schema={"type": "object", "required": ["url", "status", "width", "height", "artifact"],
                       "properties": {**_LOADED, "width": {"type": "integer"}, "height": {"type": "integer"},
                                      "artifact": ARTIFACT_OUTPUT}},
        run=screenshot,
    ),
    Tool(
        name="browser.pdf",
        description="Load a page in headless Chromium and store it printed to PDF as an artifact.",
        category="browser",
        queue="tools.browser",
        effect="repeatable",
        params_schema={"type": "object", "required": ["url"], "additionalProperties": False,
                       "properties": {**_PAGE, "paper": {"enum": sorted(_PAPER)}, "landscape": {"type": "boolean"},
                                      "background": {"type": "boolean"},
                                      "name": {"type": "string", "minLength": 1, "maxLength": 200}}},
        result_schema={"type": "object", "required": ["url", "status", "artifact"],
                       "properties": {**_LOADED, "artifact": ARTIFACT_OUTPUT}},
        run=pdf,
    ),
]
