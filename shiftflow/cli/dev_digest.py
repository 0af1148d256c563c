"""Dev mode's second example: ``examples/page_digest`` with a local mail sink and chat receiver.

The example reads a page in Chromium, screenshots and thumbnails it, emails the thumbnail
and posts to a chat. In dev mode its two connections point at servers started here, in
the dev process, on loopback: a tiny SMTP sink that saves every message as an ``.eml``
file under the data directory, and a Slack-compatible receiver that prints what it got.

Nothing is skipped silently: when Chromium is not installed, or the example is not there
(an installed package without the source tree), the example is not loaded and dev mode
says why and how to fix it.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from shiftflow.kernel.settings import Settings
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.workflows import Webhook

#: Where the example lives in a source checkout (dev mode runs from one: ``make run``).
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page_digest" / "workflow.yaml"
HOOK_TOKEN = "dev-page-digest"


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for ``email.send`` with ``security: none`` and no AUTH."""

    saved: Callable[[bytes], str]

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self._reply("220 shiftflow dev mail sink")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-shiftflow-dev\r\n250 8BITMIME\r\n")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                body = bytearray()
                while (chunk := self.rfile.readline(1 << 20)) not in (b".\r\n", b".\n", b""):
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                self._reply(f"250 saved as {self.saved(bytes(body))}")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                self._reply("250 OK")


#: The page the printed command digests (served by the chat receiver at ``/page``).
PAGE = (b"<html><head><title>ShiftFlow dev page</title></head><body style='background:#fafafa'>"
        b"<h1>Hello from dev mode</h1><p>Screenshotted by Chromium, thumbnailed, mailed.</p></body></html>")


class _Chat(BaseHTTPRequestHandler):
    """A Slack-compatible incoming webhook (prints the message, answers ``200 ok``), and
    a page to digest at ``GET /page``."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/page" else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            text = json.loads(self.rfile.read(length) or b"{}").get("text", "")
        except ValueError:
            text = "(not JSON)"
        print(f"  [dev chat] {text}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the message itself is printed."""


@dataclass
class Digest:
    """The loaded example: its webhook, and the local servers its connections point at."""

    hook: Webhook
    mail_dir: str
    page_url: str
    servers: list[Any]

    def close(self) -> None:
        """Stop the mail sink and the chat receiver."""
        for server in self.servers:
            server.shutdown()
            server.server_close()


def missing(settings: Settings) -> str | None:
    """Why the example cannot run in this dev process (None: it can)."""
    if not EXAMPLE.exists():
        return f"{EXAMPLE} is not there (dev mode runs it from a source checkout)"
    if not (os.path.exists(settings.chromium_path) or shutil.which(settings.chromium_path)):
        return (f"Chromium is not installed at {settings.chromium_path} (SHIFTFLOW_CHROMIUM_PATH): "
                f"`make tools` installs it")
    return None


def _serve(server: Any, name: str) -> Any:
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def load(settings: Settings) -> Digest | None:
    """Start the mail sink and the chat receiver, store the two connections and apply the
    example with its webhook; or say loudly why not and return None."""
    reason = missing(settings)
    if reason:
        print(f"  NOT LOADED: the page-digest example (browser steps): {reason}", flush=True)
        return None
    mail_dir = os.path.join(settings.data_dir, "mail")
    os.makedirs(mail_dir, exist_ok=True)

    def save(message: bytes) -> str:
        path = os.path.join(mail_dir, f"{time.time_ns()}.eml")
        Path(path).write_bytes(message)
        print(f"  [dev mail] saved {path}", flush=True)
        return os.path.basename(path)

    handler = type("DevSmtp", (_Smtp,), {"saved": staticmethod(save)})
    smtp = _serve(socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler), "dev-mail")
    smtp.daemon_threads = True
    chat = _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Chat), "dev-chat")
    workspace = catalog.ensure_workspace("dev", "Dev workspace")
    store_connection(workspace.id, "smtp", "digest-mail", {
        "host": "127.0.0.1", "port": smtp.server_address[1], "security": "none", "from": "digest@shiftflow.dev"})
    store_connection(workspace.id, "slack", "digest-chat",
                     {"webhook_url": f"http://127.0.0.1:{chat.server_address[1]}/services/dev"})
    applied = catalog.apply_definition(workspace, yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))
    hook = Webhook.get_or_none(Webhook.token == HOOK_TOKEN)
    if hook is None:
        hook = catalog.create_webhook(applied.workflow, token=HOOK_TOKEN)
    print(f"  workflow {applied.workflow.name!r} version {applied.version} "
          f"(mail to {mail_dir}, chat messages printed here)")
    return Digest(hook, mail_dir, f"http://127.0.0.1:{chat.server_address[1]}/page", [smtp, chat])


def banner(digest: Digest | None, base: str, curl: Callable[[str, str, str], str]) -> list[str]:
    """The lines dev mode prints about the example."""
    if digest is None:
        return []
    body = json.dumps({"url": digest.page_url, "email": "you@example.com"}, separators=(",", ":"))
    return ["\nOr make a page digest (Chromium reads a page, the thumbnail is mailed to "
            f"{digest.mail_dir}, the chat message is printed here):\n",
            "  " + curl(f"{base}/hooks/{digest.hook.token}", webhook_secrets.reveal(digest.hook)[0], body), ""]
