"""Tool layer overhead: each tool's function against the same library called directly.

One run, one machine. For every tool, ``n`` calls through ``Tool.call`` (schema checks,
the SSRF guard, the artifact store, the shared browser pool) and ``n`` calls of the
library doing the same work directly (smtplib, httpx, Pillow, ffprobe/ffmpeg, the same
DevTools commands on the same Chromium), alternating blocks so that load drifts hit both.
Local servers run as subprocesses (SMTP: aiosmtpd; HTTP: a tiny Python server) so the
CPU measured is the caller's.

Prints per tool: calls/s and CPU ms per call of both, and the ratios tool/direct
(calls/s below 1 and CPU above 1 = the layer's cost). CPU is this process's CPU plus that
of the children it waited for (ffmpeg, ffprobe); Chromium's own CPU is not included (its
processes outlive a call), the same for both sides.

This measures the tool layer, not the engine: no broker, no database. The engine's
overhead per step is bench/bench_engine.py's.

Usage: ``.venv/bin/python bench/bench_tools.py [--scale 1.0]`` (about two minutes on a
loaded 2-core machine; ``--scale 0.2`` for a quick look).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import resource
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from shiftflow.kernel.artifacts import LocalArtifactStore  # noqa: E402
from shiftflow.kernel.tools import browser  # noqa: E402
from shiftflow.kernel.tools.base import ToolContext, ToolLimits  # noqa: E402
from shiftflow.kernel.tools.http import tls_context  # noqa: E402
from shiftflow.kernel.tools.registry import ToolRegistry, builtin_tools  # noqa: E402

PY = sys.executable
HTTP_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
PAGE = b"<!doctype html><html><head><title>Bench</title></head><body><h1>Hello</h1><p>bench page</p></body></html>"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _send(self, status, ctype, body):
        self.send_response(status); self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        self._send(200, "text/html", PAGE) if self.path == "/page" else self._send(200, "application/json", b'{"ok": true}')
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0)); self._send(200, "text/plain", b"ok")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server {process.args} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``n`` calls."""
    wall, used = time.perf_counter(), cpu()
    for _ in range(n):
        fn()
    return time.perf_counter() - wall, cpu() - used


def compare(name: str, tool: Callable[[], Any], direct: Callable[[], Any], n: int, rows: list[str]) -> None:
    tool(), direct()  # warm up: connections, caches, the browser
    totals = {"tool": [0.0, 0.0], "direct": [0.0, 0.0]}
    blocks = max(1, min(5, n))
    for _ in range(blocks):  # alternate blocks: load drifts hit both sides
        for side, fn in (("direct", direct), ("tool", tool)):
            wall, used = measure(fn, max(1, n // blocks))
            totals[side][0] += wall
            totals[side][1] += used
    calls = blocks * max(1, n // blocks)
    t_rate, d_rate = calls / totals["tool"][0], calls / totals["direct"][0]
    t_cpu, d_cpu = 1000 * totals["tool"][1] / calls, 1000 * totals["direct"][1] / calls
    rows.append(f"{name:<20} {calls:>5} {t_rate:>10.1f} {d_rate:>10.1f} {t_rate / d_rate:>7.2f} "
                f"{t_cpu:>9.2f} {d_cpu:>9.2f} {t_cpu / d_cpu if d_cpu else float('nan'):>7.2f}")
    print(rows[-1], flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every call count")
    args = parser.parse_args()

    def n(count: int) -> int:
        return max(2, int(count * args.scale))

    tools = ToolRegistry(builtin_tools())
    work = tempfile.mkdtemp(prefix="bench-tools-")
    store = LocalArtifactStore(work)
    smtp_port, http_port = free_port(), free_port()
    servers = [
        subprocess.Popen([PY, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}", "-c", "aiosmtpd.handlers.Sink"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([PY, "-c", HTTP_SERVER, str(http_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    rows: list[str] = []
    try:
        for port, process in zip((smtp_port, http_port), servers, strict=True):
            wait_port(port, process)
        base = f"http://127.0.0.1:{http_port}"
        smtp_creds = {"host": "127.0.0.1", "port": smtp_port, "security": "none", "from": "bench@shiftflow.test"}
        ctx = ToolContext(artifacts=store, allow_private=True, limits=ToolLimits(page_timeout=60))
        print(f"{'tool':<20} {'calls':>5} {'tool/s':>10} {'direct/s':>10} {'ratio':>7} "
              f"{'tool ms':>9} {'direct ms':>9} {'ratio':>7}   (CPU ms per call)", flush=True)

        # --- http.request: httpx directly. Both sides share one TLS context: httpx's default
        # (verify=True) loads the CA bundle per client, ~20 ms of CPU, which would make the
        # tool look 10x cheaper than the library; that is http.py's fix, not the layer's cost.
        http_tool = tools.get("http.request")
        tls = tls_context()
        compare("http.request", lambda: http_tool.call({"url": base + "/json"}, ctx),
                lambda: httpx.get(base + "/json", timeout=10, verify=tls).json(), n(200), rows)

        # --- notify.chat: the same POST with httpx
        chat = tools.get("notify.chat")
        chat_ctx = ToolContext(artifacts=store, allow_private=True, credentials={"webhook_url": base + "/hook"})
        compare("notify.chat", lambda: chat.call({"text": "bench"}, chat_ctx),
                lambda: httpx.post(base + "/hook", json={"text": "bench"}, timeout=10, verify=tls), n(200), rows)

        # --- email.send: smtplib.sendmail of the same message
        send = tools.get("email.send")
        mail_ctx = ToolContext(artifacts=store, allow_private=True, credentials=smtp_creds)
        params = {"to": "ann@example.com", "subject": "bench", "text": "hello", "html": "<p>hello</p>"}

        def direct_mail() -> None:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "bench@shiftflow.test", "ann@example.com", "bench"
            message.set_content("hello")
            message.add_alternative("<p>hello</p>", subtype="html")
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
                smtp.send_message(message)

        compare("email.send", lambda: send.call(params, mail_ctx), direct_mail, n(100), rows)

        # --- media.image: Pillow directly (bytes in, bytes out) vs artifacts in and out
        picture = io.BytesIO()
        Image.effect_mandelbrot((800, 600), (-2, -1.2, 1, 1.2), 64).convert("RGB").save(picture, "PNG")
        source = store.put(picture.getvalue(), "bench.png", "image/png").to_dict()
        image_tool = tools.get("media.image")

        def direct_image() -> None:
            with Image.open(io.BytesIO(picture.getvalue())) as image:
                image.thumbnail((200, 200))
                image.save(io.BytesIO(), "PNG")

        def tool_image() -> None:
            out = image_tool.call({"input": source, "operation": "thumbnail", "width": 200, "height": 200}, ctx)
            store.delete(out["artifact"]["location"])

        compare("media.image", tool_image, direct_image, n(60), rows)

        # --- media.probe / media.transcode: ffprobe / ffmpeg directly
        clip_path = Path(work) / "clip.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip_path)], check=True)
        clip = store.put(clip_path.read_bytes(), "clip.mp4", "video/mp4").to_dict()
        probe_tool, transcode_tool = tools.get("media.probe"), tools.get("media.transcode")
        compare("media.probe", lambda: probe_tool.call({"input": clip}, ctx),
                lambda: subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                                        "-show_streams", str(clip_path)], capture_output=True, check=True),
                n(20), rows)

        def tool_transcode() -> None:
            out = transcode_tool.call({"input": clip, "format": "gif", "fps": 5, "max_width": 80}, ctx)
            store.delete(out["artifact"]["location"])

        def direct_transcode() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(clip_path), "-vf",
                                "fps=5,scale=w='min(iw,80)':h='min(ih,80)':force_original_aspect_ratio=decrease",
                                "-c:v", "gif", "-an", f"{tmp}/out.gif"], check=True)

        compare("media.transcode", tool_transcode, direct_transcode, n(8), rows)

        # --- browser.fetch / browser.screenshot: the same DevTools commands on a browser of
        # the same kind, driven directly (no schema, guard, artifact store or pool bookkeeping).
        fetch, shot = tools.get("browser.fetch"), tools.get("browser.screenshot")
        direct_pool = browser.BrowserPool("/usr/bin/chromium", guard=None, max_calls=10**9, memory_mb=65_536)

        def direct_page(action: Callable[[Any], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with direct_pool.browser() as chromium, chromium.page(width=1280, height=800,
                                                                      deadline=time.monotonic() + 60) as page:
                    page.navigate(base + "/page")
                    return action(page)
            return run

        compare("browser.fetch", lambda: fetch.call({"url": base + "/page"}, ctx),
                direct_page(lambda page: (page.evaluate("document.title"), page.evaluate("document.body.innerText"))),
                n(12), rows)

        def tool_shot() -> None:
            out = shot.call({"url": base + "/page"}, ctx)
            store.delete(out["artifact"]["location"])

        compare("browser.screenshot", tool_shot,
                direct_page(lambda page: base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])),
                n(12), rows)
        direct_pool.close()
    finally:
        browser.close_pools()
        for process in servers:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
    print(f"\n{len(rows)} tools measured; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
