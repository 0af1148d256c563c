"""Real local servers for the tool tests: SMTP (aiosmtpd), S3 (moto_server), web pages.

Every server listens on 127.0.0.1 only and is stopped by the fixture that started it
(subprocesses by their PID).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    """A port nothing listens on right now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SelfSigned:
    """A self-signed certificate for 127.0.0.1/localhost and its key, as PEM files."""

    cert_pem: str
    cert_path: str
    key_path: str


def self_signed(directory: str) -> SelfSigned:
    """Make a self-signed certificate (EC P-256, valid one day) for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shiftflow test smtp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    Path(cert_path).write_text(cert_pem)
    Path(key_path).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return SelfSigned(cert_pem, cert_path, key_path)


@dataclass
class SmtpHandler:
    """Records every accepted message; refuses recipients by domain.

    ``refuse`` maps a domain to the reply its recipients get (``"550 no such user"``);
    ``data_delay`` makes the server sit on a message body that long before answering.
    """

    messages: list[tuple[Envelope, Message]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    data_delay: float = 0.0
    logins: list[str] = field(default_factory=list)
    tls_sessions: list[bool] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.refuse.get(address.rsplit("@", 1)[-1])
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        self.tls_sessions.append(session.ssl is not None)
        self.messages.append((envelope, message_from_bytes(envelope.content, policy=default_policy)))
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 with STARTTLS required and AUTH (user ``mailer``, password ``s3cret``)."""

    USER, PASSWORD = "mailer", "s3cret"

    def __init__(self, cert: SelfSigned, handler: SmtpHandler | None = None) -> None:
        self.handler = handler or SmtpHandler()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert_path, cert.key_path)
        self.port = free_port()

        def authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str,
                         data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and data.login.decode() == self.USER \
                and data.password.decode() == self.PASSWORD
            if ok:
                self.handler.logins.append(data.login.decode())
            return AuthResult(success=ok, handled=False)

        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, tls_context=context, require_starttls=True,
            authenticator=authenticate, auth_require_tls=True,
        )
        self.controller.start()

    def credentials(self, cert: SelfSigned, **more: Any) -> dict[str, Any]:
        """A connection's credentials for this server (trusting its certificate)."""
        return {"host": "127.0.0.1", "port": self.port, "security": "starttls", "username": self.USER,
                "password": self.PASSWORD, "from": "robot@shiftflow.test", "tls_ca_pem": cert.cert_pem, **more}

    def stop(self) -> None:
        """Stop the server thread."""
        self.controller.stop()


class MotoServer:
    """``moto_server`` (an S3-compatible server) as a subprocess on a loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log")
        binary = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {Path(self._log.name).read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not listen within 60 s")

    def stop(self) -> None:
        """Stop the server by its PID."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


Route = Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes] | None]


class PageServer:
    """A loopback HTTP server answering from a dict of routes; records every path it served.

    A route's value is ``(status, headers, body)`` or a function of the handler returning
    that (or None after answering by itself); the request body is ``handler.body``.
    """

    def __init__(self, routes: dict[str, Any] | None = None) -> None:
        self.routes: dict[str, Any] = routes or {}
        self.hits: list[str] = []
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                self.body = body  # routes read the request body here
                server.hits.append(self.path)
                server.requests.append({"method": self.command, "path": self.path, "body": body,
                                        "headers": dict(self.headers)})
                route = server.routes.get(self.path.split("?", 1)[0])
                if callable(route):
                    route = route(self)
                    if route is None:
                        return
                status, headers, payload = route or (404, {"Content-Type": "text/plain"}, b"not found")
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
