"""The fake SideShift's state: quotes, shifts, their lifecycle, counters and fault knobs.

Everything runs on an injected ``FakeClock``: a test moves time with ``advance`` and
simulates a user's deposit with ``deposit``; statuses then move on their own as time
passes (waiting -> pending -> processing -> settling -> settled; refund -> refunding ->
refunded; review until ``resolve_review``; waiting -> expired at ``expiresAt``).

The counters are what fault tests read to count double orders: ``created`` (every shift
id, in order), ``created_by_quote`` and ``created_by_external_id``. All state is guarded
by one re-entrant lock, since the server thread and the test thread both touch it.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from random import Random
from typing import Any

from shiftflow.fakes.sideshift_behaviour import DEFAULT_COMMISSION, FakeBehaviour
from shiftflow.fakes.sideshift_catalog import (
    ApiError,
    Clock,
    FakeClock,
    FakeCoin,
    bad_input,
    default_coins,
    default_range,
    pair_rate,
    quantize_amount,
)
from shiftflow.fakes.sideshift_records import FakeDeposit, FakeQuote, FakeShift, Timings

#: Routes that create a shift: the targets of ``delay_next_create``/``drop_next_create``.
CREATE_ROUTES = frozenset({"shifts_fixed", "shifts_variable"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received (headers lower-cased)."""

    route: str
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    client: str


@dataclass
class _Failures:
    count: int = 0
    status: int = 500
    after_effect: bool = False
    routes: frozenset[str] | None = None


@dataclass
class _CreateFaults:
    delay: float = 0.0
    drop: bool = False


class FakeSideShift:
    """State and test controls of the fake SideShift (serve it with ``create_app``).

    Parameters:
        clock: the clock every lifetime and window uses; a fresh ``FakeClock`` by default
            (tests), or a ``SystemClock`` for dev mode.
        affiliate_id: the account that exists from the start.
        secret: its ``x-sideshift-secret``; when set, authenticated endpoints require it.
        timings: lifecycle step durations.
        seed: seeds ids and addresses, so runs are reproducible.
        quote_limit, shift_limit: per-IP creations per ``rate_window`` seconds (429 above).
        enforce_rate_limits: False turns the 429s off.
        behaviour: the fake's answers where SideShift's documentation is silent (reused
            quote, unknown or malformed shift id, ``Retry-After``, excess decimals,
            commission format); ``FakeBehaviour()`` by default. Change it any time with
            ``state.behaviour = state.behaviour.updated({...})``.
        max_open_variable: open (unfunded, unexpired) variable shifts allowed per IP.
        require_user_ip: refuse authenticated calls without ``x-user-ip`` (server-side mode).
        auto_deposit: paper trading: deposit into every new shift at once (fixed: exactly
            ``depositAmount``; variable: twice the minimum), so orders run to ``settled``.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        affiliate_id: str = "AbCdE1234",
        secret: str | None = None,
        timings: Timings | None = None,
        seed: int = 0,
        quote_limit: int = 20,
        shift_limit: int = 5,
        rate_window: float = 60.0,
        enforce_rate_limits: bool = True,
        behaviour: FakeBehaviour | None = None,
        max_open_variable: int = 5,
        require_user_ip: bool = False,
        auto_deposit: bool = False,
    ) -> None:
        self.lock = threading.RLock()
        self.clock: Clock = clock or FakeClock()
        self.auto_deposit = auto_deposit
        self.rng = Random(seed)
        self.timings = timings or Timings()
        self.affiliate_id = affiliate_id
        self.accounts: dict[str, str | None] = {affiliate_id: secret}
        self.require_secret = secret is not None
        self.require_user_ip = require_user_ip
        self.coins: dict[str, FakeCoin] = default_coins()
        self.limits = {"quotes": quote_limit, "shifts": shift_limit}
        self.rate_window = rate_window
        self.enforce_rate_limits = enforce_rate_limits
        self.behaviour = behaviour or FakeBehaviour()
        self.max_open_variable = max_open_variable
        self.blocked_ips: set[str] = set()
        self.disabled_pairs: set[tuple[str, str, str, str]] = set()
        self.ranges: dict[tuple[str, str, str, str], tuple[Decimal, Decimal]] = {}
        self.quotes: dict[str, FakeQuote] = {}
        self.shifts: dict[str, FakeShift] = {}
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.deposit_addresses: set[str] = set()
        # Counters read by tests.
        self.requests: list[RecordedRequest] = []
        self.created: list[str] = []
        self.created_by_quote: Counter[str] = Counter()
        self.created_by_external_id: Counter[str] = Counter()
        self.quotes_created = 0
        self.rate_limited: Counter[str] = Counter()
        self._hits: dict[tuple[str, str], deque[datetime]] = {}
        self._failures = _Failures()
        self._create_faults = _CreateFaults()

    # -- test controls ---------------------------------------------------------------

    def now(self) -> datetime:
        """The fake's current time."""
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward and apply every status change that falls due."""
        with self.lock:
            self.clock.advance(seconds)
            self.tick()

    @property
    def created_total(self) -> int:
        """How many shifts were created (including those whose answer was lost)."""
        return len(self.created)

    def double_orders(self) -> dict[str, int]:
        """Quote ids and external ids that back more than one shift, with their counts."""
        with self.lock:
            doubles = {f"quote:{k}": n for k, n in self.created_by_quote.items() if n > 1}
            doubles.update({f"externalId:{k}": n for k, n in self.created_by_external_id.items() if n > 1})
            return doubles

    def deposit(self, shift_id: str, amount: Decimal | str, *, tx_hash: str | None = None) -> dict[str, Any]:
        """Simulate a user's deposit to a shift; it is seen now (status ``pending``).

        A fixed shift needs exactly its ``depositAmount``; another amount, a second deposit
        or a deposit after expiry goes to ``refund``. A variable deposit below the minimum
        goes to ``refund``, above the maximum to ``review``; otherwise it settles at the
        current rate. Two or more deposits make the shift ``multiple``.

        Returns:
            The shift as ``GET /shifts/{id}`` shows it.

        Raises:
            KeyError: unknown shift id.
        """
        with self.lock:
            self.tick()
            shift = self.shifts[shift_id]
            now = self.now()
            value = Decimal(amount)
            problem, issue = shift.classify(value)
            dep = FakeDeposit(
                amount=value,
                received_at=now,
                tx_hash=tx_hash or self.rng.getrandbits(256).to_bytes(32, "big").hex(),
                status="pending",
                next_at=now + timedelta(seconds=self.timings.confirm),
                updated_at=now,
                problem=problem,
                issue=issue,
            )
            if shift.type == "fixed":
                dep.rate, dep.settle_amount = shift.rate, shift.settle_amount
            elif problem is None:
                self._price_deposit(shift, dep)
            shift.deposits.append(dep)
            shift.updated_at = now
            return shift.to_json(now)

    def resolve_review(self, shift_id: str, *, settle: bool = True) -> dict[str, Any]:
        """Decide the shift's deposits in ``review``: settle them, or send them to refund."""
        with self.lock:
            shift = self.shifts[shift_id]
            now = self.now()
            for dep in shift.deposits:
                if dep.status != "review":
                    continue
                if settle:
                    dep.problem = None
                    if dep.rate is None:
                        self._price_deposit(shift, dep)
                    shift.move(dep, "settling", now, self.timings, self.rng)
                else:
                    shift.move(dep, "refund", now, self.timings, self.rng)
            return shift.to_json(now)

    def _price_deposit(self, shift: FakeShift, dep: FakeDeposit) -> None:
        """A variable shift's deposit gets the current rate, less the shift's commission."""
        settle = self.coins[shift.settle_coin]
        dep.rate = pair_rate(self.coins[shift.deposit_coin], settle, shift.commission)
        dep.settle_amount = quantize_amount(dep.amount * dep.rate, places=settle.places(shift.settle_network))

    def set_price(self, coin: str, usd: Decimal | str) -> None:
        """Change a coin's USD price (rates of new quotes and variable deposits follow)."""
        with self.lock:
            old = self.coins[coin.upper()]
            self.coins[old.coin] = FakeCoin(
                old.coin,
                old.name,
                old.networks,
                old.mainnet,
                Decimal(usd),
                old.networks_with_memo,
                old.tokens,
                old.decimals,
            )

    def set_pair_range(
        self, deposit: str, settle: str, minimum: Decimal | str, maximum: Decimal | str
    ) -> None:
        """Override a pair's deposit range; ``deposit``/``settle`` as ``coin[-network]``."""
        with self.lock:
            self.ranges[self._pair_key(deposit, settle)] = (Decimal(minimum), Decimal(maximum))

    def disable_pair(self, deposit: str, settle: str) -> None:
        """Make a pair unavailable (its quotes and shifts answer ``Method X/Y is disabled``)."""
        with self.lock:
            self.disabled_pairs.add(self._pair_key(deposit, settle))

    def block_ip(self, ip: str) -> None:
        """Treat an end-user IP as in a restricted jurisdiction (403 ``ACCESS_DENIED``)."""
        with self.lock:
            self.blocked_ips.add(ip)

    def fail_next(
        self,
        count: int,
        *,
        status: int = 500,
        after_effect: bool = False,
        routes: Iterable[str] | None = None,
    ) -> None:
        """Answer the next ``count`` calls (of ``routes``, or any) with ``status``.

        Parameters:
            after_effect: do the work first (create the shift...), then answer the error:
                the case where a blind retry makes a double order.
            routes: route names (``"shifts_fixed"``, ``"quotes"``...); None means every route.

        A 429 is SideShift's rate-limit answer (``Rate limit exceeded``, with
        ``Retry-After: 1`` when ``behaviour.retry_after_header``); any other status is
        ``Internal Server Error``.
        """
        with self.lock:
            self._failures = _Failures(
                count, status, after_effect, None if routes is None else frozenset(routes)
            )

    def delay_next_create(self, seconds: float) -> None:
        """Create the next shift at once, then hold its answer for ``seconds`` (real time)."""
        with self.lock:
            self._create_faults.delay = seconds

    def drop_next_create(self) -> None:
        """Create the next shift, then drop the connection without answering."""
        with self.lock:
            self._create_faults.drop = True

    # -- used by the API handlers ----------------------------------------------------

    def take_failure(self, route: str) -> _Failures | None:
        """Consume one injected failure if it applies to ``route``."""
        with self.lock:
            failures = self._failures
            if failures.count <= 0 or (failures.routes is not None and route not in failures.routes):
                return None
            failures.count -= 1
            return _Failures(1, failures.status, failures.after_effect, failures.routes)

    def take_create_faults(self) -> tuple[float, bool]:
        """Consume the delay and drop set for the next create: ``(delay_seconds, drop)``."""
        with self.lock:
            faults, self._create_faults = self._create_faults, _CreateFaults()
            return faults.delay, faults.drop

    def hit_limit(self, kind: str, key: str) -> None:
        """Count one call of ``kind`` for the IP ``key``; raise the 429 when over the limit."""
        if not self.enforce_rate_limits:
            return
        now = self.now()
        window = timedelta(seconds=self.rate_window)
        hits = self._hits.setdefault((kind, key), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= self.limits[kind]:
            self.rate_limited[kind] += 1
            raise self.rate_limit_error((hits[0] + window - now).total_seconds())
        hits.append(now)

    def rate_limit_error(self, wait: float) -> ApiError:
        """SideShift's 429; ``Retry-After`` (whole seconds, at least 1) only if the behaviour says so."""
        seconds = str(max(1, int(wait + 0.999)))
        headers = {"Retry-After": seconds} if self.behaviour.retry_after_header else {}
        return ApiError(429, "Rate limit exceeded", None, headers=headers)

    def resolve(
        self, coin: str, network: str | None, field_name: str, *, home: bool = False
    ) -> tuple[FakeCoin, str]:
        """A coin and a concrete network id from request input.

        ``mainnet`` means the coin's home network. A missing network is the home network
        when ``home`` (pair paths), the only network of a single-network coin, else an error.

        Raises:
            ApiError: unknown coin/network (``Method X/Y not found``) or a missing network.
        """
        spec = self.coins.get(str(coin).upper())
        net = network.lower() if isinstance(network, str) and network else None
        if spec is None:
            raise ApiError(
                400, f"Method {str(coin).upper()}/{net or 'mainnet'} not found", "METHOD_NOT_FOUND"
            )
        if net == "mainnet" or (net is None and (home or not spec.needs_network())):
            net = spec.mainnet
        if net is None:
            raise bad_input(f"Bad request: Invalid parameters: {field_name}")
        if net not in spec.networks:
            raise ApiError(400, f"Method {spec.coin}/{net} not found", "METHOD_NOT_FOUND")
        return spec, net

    def pair(
        self,
        deposit: FakeCoin,
        dnet: str,
        settle: FakeCoin,
        snet: str,
        commission: Decimal = DEFAULT_COMMISSION,
    ) -> tuple[Decimal, Decimal, Decimal]:
        """``(min, max, rate)`` of a pair; the rate is less ``commission`` (a fraction).

        Raises:
            ApiError: the pair is disabled.
        """
        key = (deposit.coin, dnet, settle.coin, snet)
        if key in self.disabled_pairs:
            raise ApiError(400, f"Method {deposit.coin}/{dnet} is disabled", "METHOD_NOT_FOUND")
        low, high = self.ranges.get(key) or default_range(deposit, dnet, snet)
        return low, high, pair_rate(deposit, settle, commission)

    def new_shift_id(self) -> str:
        """A fresh 20-hex shift id."""
        return f"{self.rng.getrandbits(80):020x}"

    def new_uuid(self) -> str:
        """A fresh UUID v4 (quote and checkout ids)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def record_shift(self, shift: FakeShift) -> None:
        """Store a new shift and count it."""
        self.shifts[shift.id] = shift
        self.deposit_addresses.add(shift.deposit_address)
        self.created.append(shift.id)
        if shift.quote_id:
            self.created_by_quote[shift.quote_id] += 1
        if shift.external_id:
            self.created_by_external_id[shift.external_id] += 1
        if self.auto_deposit:
            amount = shift.deposit_amount if shift.type == "fixed" else (shift.deposit_min or Decimal(1)) * 2
            self.deposit(shift.id, amount or Decimal(0))

    def open_variable_shifts(self, key: str) -> int:
        """Unfunded, unexpired variable shifts created from the IP ``key``."""
        return sum(
            1
            for s in self.shifts.values()
            if s.type == "variable" and s.ip_key == key and not s.deposits and not s.expired
        )

    # -- lifecycle -------------------------------------------------------------------

    def tick(self) -> None:
        """Apply every status change due at the current time (called before each request)."""
        with self.lock:
            now = self.now()
            for shift in self.shifts.values():
                shift.advance_to(now, self.timings, self.rng)

    def _pair_key(self, deposit: str, settle: str) -> tuple[str, str, str, str]:
        dcoin, _, dnet = deposit.partition("-")
        scoin, _, snet = settle.partition("-")
        dspec, dnet2 = self.resolve(dcoin, dnet or None, "deposit", home=True)
        sspec, snet2 = self.resolve(scoin, snet or None, "settle", home=True)
        return dspec.coin, dnet2, sspec.coin, snet2


__all__ = ["CREATE_ROUTES", "ApiError", "Clock", "FakeClock", "FakeSideShift", "RecordedRequest", "Timings"]
