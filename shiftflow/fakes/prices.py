"""A local CoinGecko-compatible price server for tests and dev mode. Loopback only.

Serves ``GET /api/v3/simple/price?ids=a,b&vs_currencies=usd,eur`` with CoinGecko's
shape (``{"ethereum": {"usd": 2999.5}}``; unknown ids are left out, as CoinGecko does)
and ``GET /api/v3/ping``. Prices are settable; every price request is counted, so a
test can prove that a cached price made no call::

    with FakePriceServer({"ethereum": "2500"}) as prices:
        settings = ...(SHIFTFLOW_PRICE_API_URL=prices.url)
        prices.set_price("ethereum", "3100")
        assert prices.requests == 1

``fail_next(n, status)`` answers the next ``n`` price requests with ``status`` (429, 500...),
``delay`` holds every answer (to test timeouts). With ``api_key`` set, every request must
carry it in ``x-cg-demo-api-key`` or ``x-cg-pro-api-key`` (CoinGecko's headers), else 401.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Prices the server starts with (USD), close to the fake SideShift's coin prices.
DEFAULT_PRICES = {
    "bitcoin": "60000",
    "ethereum": "3000",
    "tether": "1",
    "usd-coin": "1",
    "litecoin": "80",
    "ripple": "0.5",
}


class FakePriceServer:
    """The fake price API on ``127.0.0.1`` and a free port, served from a background thread.

    Parameters:
        prices: coin id -> USD price (decimal strings or numbers); ``DEFAULT_PRICES`` when None.
        port: 0 picks a free port.
        api_key: the key every request must carry; None accepts requests without one.
    """

    def __init__(self, prices: dict[str, Any] | None = None, *, port: int = 0, api_key: str | None = None) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._prices: dict[str, dict[str, Decimal]] = {}
        for coin, usd in (DEFAULT_PRICES if prices is None else prices).items():
            self.set_price(coin, usd)
        self.requests = 0
        self.delay = 0.0
        self._fail: tuple[int, int] = (0, 500)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API root to configure (``SHIFTFLOW_PRICE_API_URL``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_price(self, coin: str, price: Any, vs_currency: str = "usd") -> None:
        """Set one price (a decimal string or a number)."""
        with self._lock:
            self._prices.setdefault(coin, {})[vs_currency.lower()] = Decimal(str(price))

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` price requests with ``status``."""
        with self._lock:
            self._fail = (count, status)

    def _answer(self, query: dict[str, list[str]]) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            count, status = self._fail
            if count > 0:
                self._fail = (count - 1, status)
                return status, json.dumps(
                    {"status": {"error_code": status, "error_message": "fake failure"}}
                ).encode()
            ids = [i for i in ",".join(query.get("ids", [])).split(",") if i]
            currencies = [c.lower() for c in ",".join(query.get("vs_currencies", [])).split(",") if c]
            if not ids or not currencies:
                return 400, b'{"error":"Missing parameter ids or vs_currencies"}'
            out = {
                coin: {cur: self._prices[coin][cur] for cur in currencies if cur in self._prices[coin]}
                for coin in ids
                if coin in self._prices
            }
        # JSON numbers with the prices' exact digits (CoinGecko sends numbers, never strings).
        text = (
            "{"
            + ",".join(
                f'"{coin}":{{'
                + ",".join(f'"{cur}":{format(value, "f")}' for cur, value in prices.items())
                + "}"
                for coin, prices in out.items()
            )
            + "}"
        )
        return 200, text.encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                given = self.headers.get("x-cg-demo-api-key") or self.headers.get("x-cg-pro-api-key")
                if server.api_key is not None and given != server.api_key:
                    status, body = 401, b'{"status":{"error_code":10002,"error_message":"invalid API key"}}'
                elif parts.path == "/api/v3/ping":
                    status, body = 200, b'{"gecko_says":"(V3) To the Moon!"}'
                elif parts.path == "/api/v3/simple/price":
                    if server.delay:
                        time.sleep(server.delay)
                    status, body = server._answer(parse_qs(parts.query))
                else:
                    status, body = 404, b'{"error":"Not Found"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler

    def start(self) -> FakePriceServer:
        """Serve in a background thread; returns ``self``."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-prices", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakePriceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
