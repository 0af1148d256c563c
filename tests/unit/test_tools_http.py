"""The HTTP tool against a real local HTTP server: answers, error classes, and one TLS
context per process (loading the CA bundle per call was most of an HTTP step's cost)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from shiftflow.kernel.errors import RateLimited, ToolError, ToolUnavailable
from shiftflow.kernel.tools import http


def test_json_answer_and_a_single_tls_context(json_service, monkeypatch):
    built = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(httpx, "create_ssl_context", lambda *a, **k: built.append(1) or real(*a, **k))
    http.tls_context.cache_clear()
    try:
        for n in range(3):
            out = http.call({"url": json_service.url, "method": "POST", "json": {"n": n}}, timeout=5,
                            allow_private=True)
            assert out["status"] == 200 and out["json"]["received"] == {"n": n}
        assert len(built) == 1  # three calls, one CA bundle load
    finally:
        http.tls_context.cache_clear()


def test_private_destinations_are_refused_unless_allowed(json_service):
    with pytest.raises(ToolError, match="not a public address"):
        http.call({"url": json_service.url}, timeout=5, allow_private=False)


def test_refused_connection_is_transient():
    with pytest.raises(ToolUnavailable):
        http.call({"url": "http://127.0.0.1:1/"}, timeout=2, allow_private=True)


# --- SSRF, deadline and error classes (issue 11, finding 6) -------------------------------

import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import ipaddress  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402

PUBLIC = "93.184.216.34"


class Resolver:
    """A ``socket.getaddrinfo`` stand-in: each name answers its list of addresses in turn
    (the last one repeats), other names go to the real resolver. ``asked`` counts lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: dict[str, int] = {}
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        n = self.asked[host] = self.asked.get(host, 0) + 1
        address = self.answers[host][min(n, len(self.answers[host])) - 1]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, port or 0, 0, 0) if family == socket.AF_INET6 else (address, port or 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]


@pytest.fixture
def connections(monkeypatch):
    """Every TCP connection attempt (address, port); one to a non-loopback address is
    refused at once (this machine has no route out, and a test must not wait on one)."""
    attempts: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        host, port = str(address[0]), int(address[1])
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # a name: what the (patched) resolver says now
            ip = ipaddress.ip_address(socket.getaddrinfo(host, port)[0][4][0])
        attempts.append((str(ip), port))
        if not ip.is_loopback:
            raise ConnectionRefusedError(f"test: no route to {ip}")
        return real((str(ip), port), *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


def test_a_rebinding_resolver_cannot_reach_loopback(json_service, monkeypatch, connections):
    # The first answer is public (what the guard checks), every later one is 127.0.0.1 (what
    # a second lookup by the client would connect to).
    resolver = Resolver({"rebind.example": [PUBLIC, "127.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    port = int(json_service.url.rsplit(":", 1)[1])
    with pytest.raises(ToolUnavailable):
        http.call({"url": f"http://rebind.example:{port}/steal"}, timeout=2, allow_private=False)
    assert json_service.calls == []
    assert connections and {a for a, _ in connections} == {PUBLIC}  # only the vetted address
    assert resolver.asked["rebind.example"] == 1


@pytest.mark.parametrize("address", [
    "64:ff9b::7f00:1",                          # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",                       # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",                         # local-use NAT64 (RFC 8215) of 10.0.0.1
    "2002:7f00:1::1",                           # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",                        # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",     # Teredo, client 127.0.0.1
    "::127.0.0.1",                              # IPv4-compatible (deprecated) 127.0.0.1
    "::ffff:10.0.0.1",                          # IPv4-mapped 10.0.0.1
    "224.0.1.1",                                # multicast
])
def test_ipv4_embedded_in_ipv6_and_other_non_public_addresses_are_refused(address, monkeypatch, connections):
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"inner.example": [address]}))
    with pytest.raises(ToolError, match="not a public address"):
        http.call({"url": "http://inner.example/"}, timeout=2, allow_private=False)
    assert connections == []


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", PUBLIC])
def test_public_addresses_embedded_or_not_pass_the_guard(address, monkeypatch, connections):
    # Positive control: the guard lets them through, and the connection goes to them.
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"outer.example": [address]}))
    with pytest.raises(ToolUnavailable):
        http.call({"url": "http://outer.example/"}, timeout=2, allow_private=False)
    assert [a for a, _ in connections] == [address]


def test_proxy_variables_are_not_followed(json_service, monkeypatch):
    proxy = type(json_service)()
    try:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        out = http.call({"url": json_service.url + "/direct"}, timeout=5, allow_private=True)
        assert out["status"] == 200
        assert proxy.calls == [] and [c["path"] for c in json_service.calls] == ["/direct"]
    finally:
        proxy.close()


class Trickler:
    """A raw HTTP server that answers one byte at a time: in the body, or in the headers."""

    def __init__(self, where: str, interval: float = 0.2, total: float = 6.0) -> None:
        self.where, self.interval, self.total = where, interval, total
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                conn.recv(65536)
                count = int(self.total / self.interval)
                if self.where == "headers":
                    head, body = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * count + b"\r\nContent-Length: 2\r\n\r\n", b"{}"
                    chunks = [head[:17]] + [bytes([b]) for b in head[17:]] + [body]
                else:
                    chunks = [f"HTTP/1.1 200 OK\r\nContent-Length: {count}\r\n\r\n".encode()] + [b"x"] * count
                for chunk in chunks:
                    if self.stop.is_set():
                        return
                    conn.sendall(chunk)
                    time.sleep(self.interval if chunk is not chunks[0] else 0)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_the_whole_call_has_one_deadline(where):
    # Every byte arrives within the read timeout, so a per-read timeout never fires: the
    # 6 s trickle held a 1 s step for all of it.
    server = Trickler(where)
    try:
        start = time.monotonic()
        with pytest.raises(ToolUnavailable, match="timed out"):
            http.call({"url": server.url}, timeout=1.0, allow_private=True)
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert elapsed < 2.5, f"a 1 s call took {elapsed:.1f} s"


def _raw_server(answer: bytes):
    """A one-shot TCP server that reads the request and writes ``answer``, then closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.mark.parametrize("inputs, error", [
    ({"url": "http://exa mple.com/"}, ToolError),
    ({"url": "http://[::1/"}, ToolError),
    ({"url": "http://127.0.0.1:99999/"}, ToolError),
    ({"url": "http:///nohost"}, ToolError),
    ({"url": "ftp://127.0.0.1/"}, ToolError),
    ({"url": 5}, ToolError),
    ({"url": "{url}", "headers": {"X-Name": "café"}}, ToolError),
    ({"url": "{url}", "headers": {"Bad Name": "x"}}, ToolError),
    ({"url": "{url}", "headers": {"X-Split": "a\r\nInjected: 1"}}, ToolError),
    ({"url": "{url}", "headers": ["a"]}, ToolError),
    ({"url": "{url}", "headers": {"X-Obj": {"a": 1}}}, ToolError),
    ({"url": "{url}", "body": {"a": 1}}, ToolError),
    ({"url": "{url}", "body": 12}, ToolError),
    ({"url": "{url}", "params": 5}, ToolError),
    ({"url": "{url}", "params": {"a": {"b": 1}}}, ToolError),
    ({"url": "{url}", "method": ["GET"]}, ToolError),
])
def test_every_bad_request_is_a_permanent_tool_error(inputs, error, json_service):
    inputs = {k: (v.replace("{url}", json_service.url) if isinstance(v, str) else v) for k, v in inputs.items()}
    with pytest.raises(error):
        http.call(inputs, timeout=2, allow_private=True)
    assert json_service.calls == []


@pytest.mark.parametrize("answer, error", [
    (b"this is not HTTP\r\n\r\n", ToolUnavailable),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", ToolUnavailable),
    (b"", ToolUnavailable),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!", ToolError),
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{x}", ToolError),
])
def test_every_bad_answer_maps_to_a_tool_error_class(answer, error):
    sock, url = _raw_server(answer)
    try:
        with pytest.raises(error):
            http.call({"url": url}, timeout=3, allow_private=True)
    finally:
        sock.close()


# --- TLS to the pinned address keeps the name ----------------------------------------------

def _certificates(tmp_path, name: str):
    """A test CA and a server certificate for ``name`` signed by it (PEM paths)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shiftflow test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_service(tmp_path):
    """An HTTPS server with a certificate for ``svc.example``; records SNI and Host."""
    paths = _certificates(tmp_path, "svc.example")
    seen: dict[str, list] = {"sni": [], "host": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["host"].append(self.headers.get("Host"))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            """Quiet."""

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["cert"], paths["key"])
    context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client_context = ssl.create_default_context(cafile=str(paths["ca"]))
    yield {"port": server.server_address[1], "seen": seen, "client_context": client_context}
    server.shutdown()
    server.server_close()


class _RateLimitedHandler(BaseHTTPRequestHandler):
    """Answers every request with the status and Retry-After header named by its path."""

    def do_GET(self) -> None:
        status, _, retry_after = self.path.strip("/").partition("/")
        self.send_response(int(status))
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def limited_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RateLimitedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tls_to_the_pinned_address_checks_the_name_and_sends_host(tls_service, monkeypatch, connections):
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"svc.example": ["127.0.0.1"],
                                                         "wrong.example": ["127.0.0.1"]}))
    monkeypatch.setattr(http, "tls_context", lambda: tls_service["client_context"])
    port = tls_service["port"]
    out = http.call({"url": f"https://svc.example:{port}/"}, timeout=5, allow_private=True)
    assert out == {"status": 200, "json": {"ok": True}}
    assert tls_service["seen"]["sni"] == ["svc.example"]
    assert tls_service["seen"]["host"] == [f"svc.example:{port}"]
    assert connections == [("127.0.0.1", port)]
    # The same address under a name the certificate does not hold is refused.
    with pytest.raises(ToolError, match="certificate"):
        http.call({"url": f"https://wrong.example:{port}/"}, timeout=5, allow_private=True)


@pytest.mark.parametrize(("path", "seconds"), [("429/7", 7.0), ("503/3", 3.0), ("429", None)])
def test_rate_limit_answers_carry_retry_after(limited_server, path, seconds):
    with pytest.raises(RateLimited) as caught:
        http.call({"url": f"{limited_server}/{path}"}, timeout=5, allow_private=True)
    assert caught.value.retry_after == seconds
    assert isinstance(caught.value, ToolUnavailable)  # still transient for callers that only know that


def test_a_503_without_retry_after_is_a_plain_transient_error(limited_server):
    with pytest.raises(ToolUnavailable) as caught:
        http.call({"url": f"{limited_server}/503"}, timeout=5, allow_private=True)
    assert not isinstance(caught.value, RateLimited)


# --- keep-alive: one connection per checked address, per thread ----------------------------

from shiftflow.kernel.tools import pinned  # noqa: E402


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep the connection open between requests

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests += 1  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _CountingServer(ThreadingHTTPServer):
    """Counts accepted TCP connections and requests."""

    daemon_threads = True

    def __init__(self, address) -> None:
        super().__init__(address, _KeepAlive)
        self.accepts = 0
        self.requests = 0

    def get_request(self):
        accepted = super().get_request()
        self.accepts += 1
        return accepted


@contextlib.contextmanager
def _counting_server(address: str, port: int = 0) -> Iterator[_CountingServer]:
    server = _CountingServer((address, port))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_kept_connections() -> Iterator[None]:
    pinned.close_pooled()
    yield
    pinned.close_pooled()


def test_calls_to_one_checked_address_reuse_one_connection():
    with _counting_server("127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/echo"
        for n in range(3):
            out = http.call({"url": url, "method": "POST", "json": {"n": n}}, timeout=5, allow_private=True)
            assert out["status"] == 200
        assert (server.accepts, server.requests) == (1, 3)


def test_a_kept_connection_is_never_used_for_another_checked_address(monkeypatch):
    """The same name, checked again, now resolves to another address: a new connection to
    that one; the kept connection to the first address carries nothing more."""
    with _counting_server("127.0.0.1") as first:
        port = first.server_address[1]
        with _counting_server("127.0.0.2", port) as second:
            resolver = Resolver({"svc.example": ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]})
            monkeypatch.setattr(socket, "getaddrinfo", resolver)
            url = f"http://svc.example:{port}/echo"
            for n in range(4):
                assert http.call({"url": url, "method": "POST", "json": {"n": n}}, timeout=5,
                                 allow_private=True)["status"] == 200
            assert resolver.asked["svc.example"] == 4  # every call is checked anew
            assert (first.accepts, first.requests) == (1, 2)
            assert (second.accepts, second.requests) == (1, 2)

