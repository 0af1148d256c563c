"""An httpx transport that connects only to addresses already checked, within one deadline.

Why: the SSRF guard resolves a URL's host and checks every address; a client that then
resolves the host again to connect can be sent elsewhere by a DNS server that answers a
public address first and 127.0.0.1 next (DNS rebinding). This transport never resolves:
its network backend connects to the checked addresses, in order, whatever host httpcore
asks for (and refuses any other host). TLS is untouched: httpcore still starts TLS with
the URL's host name, so SNI and certificate verification use the name, and the Host
header is the URL's.

Why a deadline: httpx's timeouts are per operation, so a server sending one byte just
inside the read timeout holds a call for as long as it likes (a 1 s step was held 4.8 s).
Every connect, TLS handshake, read and write here gets at most the time left before the
call's deadline, and none starts after it.

Why a pool per thread (``pooled``): a new TCP (and TLS) connection per call cost a connect
and a close on both sides for every step. A thread keeps one transport per (host, port,
scheme, checked addresses); a call reuses a kept connection only when its own check gave
the same addresses, and the deadline of each call applies to the reused connection as it
would to a new one. A connection the server closed is noticed by httpcore before reuse.

Only public names of httpx and httpcore are used (``httpcore.ConnectionPool``'s
``network_backend``; httpx's ``BaseTransport``); httpcore's exceptions are not mapped to
httpx's, the caller maps them (``tools.http``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpcore
import httpx


class Deadline:
    """The ``time.monotonic()`` moment after which nothing starts; set anew for each call
    over a kept connection."""

    def __init__(self, at: float) -> None:
        self.at = at


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the current call's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def _clip(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self._deadline.at - time.monotonic()
        if remaining <= 0:
            raise error("the call's deadline passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read at most ``max_bytes``, waiting no later than the deadline."""
        return self._inner.read(max_bytes, self._clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write ``buffer``, waiting no later than the deadline."""
        self._inner.write(buffer, self._clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the connection."""
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        """Start TLS (SNI and verification use ``server_hostname``: the URL's host)."""
        inner = self._inner.start_tls(ssl_context, server_hostname, self._clip(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        """What the inner stream says (``ssl_object``, ``server_addr``...)."""
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects ``host`` to ``addresses`` (already checked), never to what a lookup says now.

    Parameters:
        host: the only host name this backend connects (the URL's, as httpcore sees it).
        addresses: the checked addresses, tried in order until one accepts.
        deadline: ``time.monotonic()`` value after which nothing starts.
    """

    def __init__(self, host: str, addresses: Sequence[str], deadline: float) -> None:
        self.host = host
        self.addresses = list(addresses)
        self._deadline = Deadline(deadline)
        self._system = httpcore.SyncBackend()
        #: TCP connections made (tests and benchmarks count reuse by it).
        self.connects = 0

    @property
    def deadline(self) -> float:
        """The current call's deadline (``time.monotonic``); its streams follow it."""
        return self._deadline.at

    @deadline.setter
    def deadline(self, at: float) -> None:
        self._deadline.at = at

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        """Connect to the first checked address that accepts."""
        if host != self.host:
            raise httpcore.ConnectError(f"refusing to connect {host!r}: only {self.host!r} was checked")
        last: Exception | None = None
        for address in self.addresses:
            remaining = self._deadline.at - time.monotonic()
            if remaining <= 0:
                raise httpcore.ConnectTimeout("the call's deadline passed")
            try:
                stream = self._system.connect_tcp(address, port, min(timeout or remaining, remaining), local_address,
                                                  socket_options)
            except httpcore.ConnectError as exc:
                last = exc
                continue
            self.connects += 1
            return DeadlineStream(stream, self._deadline)
        raise last or httpcore.ConnectError("no address to connect to")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        """Never: the tool speaks TCP only."""
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's retries; none are configured)."""
        time.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport over one ``httpcore.ConnectionPool`` on a ``PinnedBackend``."""

    def __init__(self, backend: PinnedBackend, ssl_context: Any, *, keepalive_expiry: float | None = None) -> None:
        self.backend = backend
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend, max_connections=1,
                                             keepalive_expiry=keepalive_expiry)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` (httpcore's exceptions are left to the caller to classify)."""
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # a SyncByteStream is an Iterable[bytes]
            extensions=request.extensions,
        )
        response = self._pool.handle_request(core)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream),  # type: ignore[arg-type]
                              extensions=response.extensions)

    def close(self) -> None:
        """Close the pool's connection."""
        self._pool.close()


#: Kept transports per thread, and how long an idle connection is kept.
MAX_KEPT_PER_THREAD = 16
KEEPALIVE_SECONDS = 30.0
_kept = threading.local()


def pooled(scheme: str, host: str, port: int | None, addresses: Sequence[str], deadline: float,
           ssl_context: Any) -> PinnedTransport:
    """This thread's transport for ``host`` pinned to exactly ``addresses`` (checked by the
    caller for this call), with ``deadline`` as its current call's deadline.

    A transport (and its kept connection) is shared only by calls whose check gave the
    same addresses, in the same order, for the same host, port and scheme: a host that
    now resolves elsewhere gets a new transport, never the old connection. At most
    ``MAX_KEPT_PER_THREAD`` are kept; the least recently used is closed first.
    """
    kept: OrderedDict[tuple[Any, ...], PinnedTransport] | None = getattr(_kept, "transports", None)
    if kept is None:
        kept = _kept.transports = OrderedDict()
    key = (scheme, host, port, tuple(addresses))
    transport = kept.get(key)
    if transport is None:
        transport = PinnedTransport(PinnedBackend(host, addresses, deadline), ssl_context,
                                    keepalive_expiry=KEEPALIVE_SECONDS)
        kept[key] = transport
        while len(kept) > MAX_KEPT_PER_THREAD:
            kept.popitem(last=False)[1].close()
    else:
        kept.move_to_end(key)
        transport.backend.deadline = deadline
    return transport


def close_pooled() -> None:
    """Close this thread's kept connections (tests; a thread's exit drops them anyway)."""
    kept = getattr(_kept, "transports", None)
    while kept:
        kept.popitem()[1].close()
