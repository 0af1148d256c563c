"""The sender: signed webhooks to a real ingress, with a ledger of every answer.

It behaves as a Standard Webhooks sender would: each delivery has its own id
(``webhook-id``), is signed over ``id.timestamp.body`` with the endpoint's secret and
retried with the same id after a 503, a connection error or a timeout, until a 2xx or
a 4xx, or until the scenario's deadline (``give_up_at``). Every answer goes into the
``Ledger``, which is what the checker holds the engine to: a 202 is a promise.

The signature is computed here from the specification (HMAC-SHA256, base64, ``v1,``
prefix; the key is the base64 after ``whsec_``), not with ShiftFlow's signer, so a
shared mistake cannot make both sides agree; ``test_sender_signs_like_the_library``
checks it against the ``standardwebhooks`` library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

#: Statuses after which a sender tries again with the same delivery id (0: no answer).
RETRIED = frozenset({0, 408, 429, 500, 502, 503, 504})
#: The longest pause between two attempts of one delivery. Real senders back off for
#: minutes; a scenario lasts two, so the ingress's ``Retry-After`` is capped here.
MAX_PAUSE = 1.0


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of Standard Webhooks: ``v1,<base64 HMAC-SHA256>``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: an id, the exact body bytes, how to send it.

    ``copies``: copies sent at once on every attempt (a sender racing itself);
    ``resends``: further sends after the first 202 (a sender that missed the answer).
    ``label`` names what the body tests (``steady``, or the poison's name).
    """

    id: str
    body: bytes
    label: str = "steady"
    copies: int = 1
    resends: int = 0


@dataclass(frozen=True)
class Answer:
    """One answer to one attempt: the HTTP status (0: none), when, the reason given and
    the ``Retry-After`` seconds asked for (0: none)."""

    delivery_id: str
    status: int
    at: float
    reason: str = ""
    retry_after: float = 0.0


@dataclass
class Ledger:
    """Every delivery sent and every answer received (thread-safe)."""

    deliveries: dict[str, Delivery] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    gave_up: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, answer: Answer) -> None:
        """Record one answer."""
        with self._lock:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        """A copy of the answers so far."""
        with self._lock:
            return list(self.answers)

    def accepted(self) -> set[str]:
        """Delivery ids answered 202 at least once."""
        return {a.delivery_id for a in self.snapshot() if a.status == 202}

    def refused(self) -> dict[str, Answer]:
        """Delivery ids answered a final 4xx (and never 202), with that answer."""
        accepted = self.accepted()
        return {
            a.delivery_id: a
            for a in self.snapshot()
            if 400 <= a.status < 500 and a.status not in RETRIED and a.delivery_id not in accepted
        }

    def statuses(self) -> Counter[int]:
        """How many answers had each status (0: no answer)."""
        return Counter(a.status for a in self.snapshot())

    def by_label(self) -> dict[str, Counter[int]]:
        """Final status of each delivery, counted per label (202 if ever accepted)."""
        final: dict[str, int] = {}
        for a in self.snapshot():
            if final.get(a.delivery_id) != 202:
                final[a.delivery_id] = a.status
        out: dict[str, Counter[int]] = {}
        for delivery_id, status in final.items():
            out.setdefault(self.deliveries[delivery_id].label, Counter())[status] += 1
        return out


class WebhookSender:
    """Sends deliveries to ``url`` on a pool of threads, recording every answer.

    Parameters:
        url: the webhook URL (``http://host:port/hooks/<token>``).
        secret: the endpoint's signing secret (``whsec_...``).
        ledger: where answers go.
        give_up_at: a ``time.monotonic()`` deadline after which a delivery still not
            accepted is abandoned (``Ledger.gave_up``); the caller may move it.
        threads: deliveries in flight at once.
    """

    def __init__(self, url: str, secret: str, ledger: Ledger, *, give_up_at: float, threads: int = 24) -> None:
        self.url = url
        self.secret = secret
        self.ledger = ledger
        self.give_up_at = give_up_at
        self._client = httpx.Client(timeout=httpx.Timeout(15.0, connect=3.0), limits=httpx.Limits(
            max_connections=threads * 2, max_keepalive_connections=threads))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sender")
        self._copies = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sender-copy")
        self._futures: list[Future[None]] = []
        self._stop = threading.Event()

    # -- one attempt ------------------------------------------------------------------
    def post(self, delivery: Delivery) -> Answer:
        """Sign and POST ``delivery`` once; the answer (status 0 without one), recorded."""
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, delivery.id, timestamp, delivery.body),
        }
        try:
            response = self._client.post(self.url, content=delivery.body, headers=headers)
        except httpx.HTTPError as exc:
            answer = Answer(delivery.id, 0, time.monotonic(), f"{type(exc).__name__}: {exc}")
        else:
            reason = ""
            if response.status_code != 202:
                try:
                    reason = str(response.json().get("error", ""))
                except ValueError:
                    reason = response.text[:200]
            wait = response.headers.get("retry-after", "")
            answer = Answer(delivery.id, response.status_code, time.monotonic(), reason,
                            float(wait) if wait.isdigit() else 0.0)
        self.ledger.add(answer)
        return answer

    def _attempt(self, delivery: Delivery) -> list[Answer]:
        if delivery.copies <= 1:
            return [self.post(delivery)]
        futures = [self._copies.submit(self.post, delivery) for _ in range(delivery.copies)]
        return [f.result() for f in futures]

    # -- one delivery -----------------------------------------------------------------
    def deliver(self, delivery: Delivery) -> None:
        """Send ``delivery`` until it is accepted or refused, or the deadline passes."""
        with self.ledger._lock:
            self.ledger.deliveries[delivery.id] = delivery
        while True:
            answers = self._attempt(delivery)
            statuses = {a.status for a in answers}
            if 202 in statuses:
                for _ in range(delivery.resends):
                    self._attempt(delivery)
                return
            if statuses and all(s not in RETRIED for s in statuses):
                return  # refused (4xx): the sender would not retry it either
            if time.monotonic() >= self.give_up_at or self._stop.is_set():
                with self.ledger._lock:
                    self.ledger.gave_up.add(delivery.id)
                return
            pause = min((a.retry_after for a in answers if a.retry_after), default=MAX_PAUSE)
            time.sleep(min(pause, MAX_PAUSE))

    def submit(self, delivery: Delivery) -> None:
        """Send ``delivery`` in the background."""
        self._futures.append(self._pool.submit(self.deliver, delivery))

    def stream(self, deliveries: Iterable[Delivery], rate: float) -> None:
        """Submit ``deliveries`` at ``rate`` per second (blocking; run it in a thread)."""
        started = time.monotonic()
        for n, delivery in enumerate(deliveries):
            if self._stop.is_set():
                return
            pause = started + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.submit(delivery)

    def join(self, timeout: float) -> bool:
        """Wait until every submitted delivery settled; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        for future in list(self._futures):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                future.result(remaining)
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        """Stop retrying, wait for the threads, close the client."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._copies.shutdown(wait=True)
        self._client.close()


def delivery_id(prefix: str) -> str:
    """A fresh delivery id ``<prefix>_<hex>`` (the ids Standard Webhooks senders use look alike)."""
    return f"{prefix}_{secrets.token_hex(8)}"
