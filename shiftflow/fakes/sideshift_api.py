"""The fake SideShift's endpoint logic: checks and answers, independent of the web framework.

``handle`` runs one request under the state lock: record it, apply due status changes,
check the secret, the user IP (and jurisdiction), the per-IP rate limit, then the
endpoint. The order endpoints live in ``sideshift_orders``; the reference-data, status,
checkout and account endpoints are here. "[fake]" marks texts docs/sideshift.md leaves open.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shiftflow.fakes.sideshift_catalog import ApiError, bad_input, fmt, iso
from shiftflow.fakes.sideshift_orders import (
    ApiRequest,
    amount_of,
    body_of,
    cancel_order,
    check_address,
    check_affiliate,
    check_memo,
    check_precision,
    commission_of,
    find_shift,
    quotes,
    required,
    set_refund_address,
    shifts_fixed,
    shifts_variable,
)
from shiftflow.fakes.sideshift_state import FakeSideShift, RecordedRequest

_IP_MESSAGE = "The x-user-ip header must be set to the end-user IP address"


Handler = Callable[[FakeSideShift, ApiRequest, str], tuple[int, Any]]


@dataclass(frozen=True)
class _Spec:
    handler: Handler
    auth: bool = False  # x-sideshift-secret required (when the fake has a secret)
    limit: str | None = None  # rate-limit kind
    geo: bool = False  # refused from a blocked IP
    needs_ip: bool = False  # x-user-ip always required


def handle(state: FakeSideShift, req: ApiRequest) -> tuple[int, Any]:
    """Answer one request: ``(status, json_payload)``; 204 answers carry None.

    Raises:
        ApiError: every error answer (the caller renders ``body()`` with ``status``).
    """
    spec = SPECS[req.route]
    with state.lock:
        state.tick()
        if spec.auth and state.require_secret:
            secret = req.headers.get("x-sideshift-secret")
            if not secret or secret not in {s for s in state.accounts.values() if s}:
                raise ApiError(401, 'Incorrect or missing "x-sideshift-secret" header', "FORBIDDEN")
        key = _ip_key(state, req, spec)
        if spec.limit:
            state.hit_limit(spec.limit, key)
        return spec.handler(state, req, key)


def record(state: FakeSideShift, req: ApiRequest) -> None:
    """Keep the request for tests (headers as received)."""
    with state.lock:
        state.requests.append(
            RecordedRequest(req.route, req.method, req.path, req.query, req.headers, req.body, req.client)
        )


def _ip_key(state: FakeSideShift, req: ApiRequest, spec: _Spec) -> str:
    ip = req.headers.get("x-user-ip")
    if ip is not None:
        try:
            ipaddress.ip_address(ip.strip())
        except ValueError:
            raise ApiError(400, _IP_MESSAGE, None) from None
    elif spec.needs_ip or (spec.auth and state.require_user_ip):
        raise ApiError(400, _IP_MESSAGE, None)
    key = ip.strip() if ip else req.client
    if spec.geo and key in state.blocked_ips:
        raise ApiError(403, "Access denied. See https://sideshift.ai/access-denied", "ACCESS_DENIED")
    return key


# -- endpoints -------------------------------------------------------------------------


def coins(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /coins``."""
    return 200, [coin.to_json() for coin in state.coins.values()]


def permissions(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /permissions``: False for a blocked IP."""
    return 200, {"createShift": key not in state.blocked_ips}


def _pair_json(
    state: FakeSideShift, dspec: Any, dnet: str, sspec: Any, snet: str, commission: Decimal
) -> dict[str, Any]:
    low, high, rate = state.pair(dspec, dnet, sspec, snet, commission)
    return {
        "min": fmt(low),
        "max": fmt(high),
        "rate": fmt(rate),
        "depositCoin": dspec.coin,
        "settleCoin": sspec.coin,
        "depositNetwork": dnet,
        "settleNetwork": snet,
    }


def pair(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /pair/{from}/{to}``; a bare coin or ``coin-mainnet`` is the home network; the
    rate is less ``commissionRate``."""
    if "affiliateId" in req.query:
        check_affiliate(state, req.query, 'Invalid "affiliateId"')
    commission = commission_of(state, req.query)
    dcoin, _, dnet = req.params["from"].partition("-")
    scoin, _, snet = req.params["to"].partition("-")
    dspec, dnet2 = state.resolve(dcoin, dnet or None, "from", home=True)
    sspec, snet2 = state.resolve(scoin, snet or None, "to", home=True)
    amount = amount_of(req.query.get("amount"), "amount")
    if amount is not None:
        check_precision(state, amount, dspec, dnet2, "amount")
    return 200, _pair_json(state, dspec, dnet2, sspec, snet2, commission)


def pairs(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /pairs?pairs=a,b``: every ordered pair; errors under 500 as documented."""
    commission = commission_of(state, req.query)
    specs = [item.strip() for item in req.query.get("pairs", "").split(",") if item.strip()]
    resolved = []
    for item in specs:
        coin, _, net = item.partition("-")
        spec = state.coins.get(coin.upper())
        if spec is None:
            raise ApiError(500, "Invalid coin", None)
        net = spec.mainnet if not net or net == "mainnet" else net.lower()
        if net not in spec.networks:
            raise ApiError(500, "Invalid network", None)
        if (spec.coin, net) in resolved:
            raise ApiError(500, "Duplicate coin", None)
        resolved.append((spec.coin, net))
    result = []
    for dcoin, dnet in resolved:
        for scoin, snet in resolved:
            if (dcoin, dnet) != (scoin, snet) and (dcoin, dnet, scoin, snet) not in state.disabled_pairs:
                result.append(
                    _pair_json(state, state.coins[dcoin], dnet, state.coins[scoin], snet, commission)
                )
    return 200, result


def shift(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /shifts/{id}``."""
    return 200, find_shift(state, req.params["shift_id"]).to_json(state.now())


def shifts_bulk(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /shifts?ids=a,b``: the known ones, in the order asked; 404 when none is known."""
    ids = [item for item in re.split(r"\s*,\s*", req.query.get("ids", "").strip()) if item]
    if not ids:
        raise bad_input("Bad request: Invalid parameters: ids")
    found = [state.shifts[i].to_json(state.now()) for i in ids if i in state.shifts]
    if not found:
        raise ApiError(404, "Shift not found", "NOT_FOUND")
    return 200, found


def _checkout_time(state: FakeSideShift) -> str:
    return iso(state.now())[:-1] + "000000Z"  # checkout objects use 9 fraction digits


def checkout_create(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /checkout`` (SideShift Pay)."""
    body = body_of(req)
    affiliate = check_affiliate(state, body, "Unknown affiliateId")
    sspec, snet = state.resolve(
        required(body, "settleCoin"), required(body, "settleNetwork"), "settleNetwork"
    )
    amount = amount_of(required(body, "settleAmount"), "settleAmount")
    assert amount is not None
    amount = check_precision(state, amount, sspec, snet, "settleAmount")
    data: dict[str, Any] = {
        "id": state.new_uuid(),
        "settleCoin": sspec.coin,
        "settleNetwork": snet,
        "settleAddress": check_address(state, snet, body.get("settleAddress"), "settle"),
        "settleAmount": fmt(amount),
        "affiliateId": affiliate,
        "successUrl": required(body, "successUrl"),
        "cancelUrl": required(body, "cancelUrl"),
        "createdAt": _checkout_time(state),
        "updatedAt": _checkout_time(state),
    }
    memo = check_memo(state, sspec.coin, snet, body.get("settleMemo"), "settleMemo")
    if memo is not None:
        data["settleMemo"] = memo
    state.checkouts[data["id"]] = data
    return 201, data


def checkout_get(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``GET /checkout/{id}``: the checkout with its (here always empty) ``orders``."""
    data = state.checkouts.get(req.params["checkout_id"])
    if data is None:
        raise ApiError(404, "Checkout not found", "NOT_FOUND")
    return 200, {**data, "orders": []}


def create_account(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /create-account``: no body -> ``{id, secret}``; ``{"pubKey"}`` -> ``{id, pubKey}``."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    account_id = "".join(state.rng.choice(alphabet) for _ in range(9))
    body = req.body or {}
    if not isinstance(body, Mapping):
        raise bad_input("Bad request")
    if "pubKey" in body:
        pub = body["pubKey"]
        if not isinstance(pub, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", pub):
            raise bad_input("Bad request: Invalid parameters: pubKey")
        state.accounts[account_id] = None
        return 201, {"id": account_id, "pubKey": pub}
    secret = f"{state.rng.getrandbits(128):032x}"
    state.accounts[account_id] = secret
    return 201, {"id": account_id, "secret": secret}


SPECS: dict[str, _Spec] = {
    "coins": _Spec(coins),
    "permissions": _Spec(permissions),
    "pair": _Spec(pair, auth=True),
    "pairs": _Spec(pairs, auth=True),
    "quotes": _Spec(quotes, auth=True, limit="quotes", geo=True),
    "shifts_fixed": _Spec(shifts_fixed, auth=True, limit="shifts", geo=True),
    "shifts_variable": _Spec(shifts_variable, auth=True, limit="shifts", geo=True),
    "shift": _Spec(shift),
    "shifts": _Spec(shifts_bulk),
    "set_refund_address": _Spec(set_refund_address, auth=True),
    "cancel_order": _Spec(cancel_order, auth=True),
    "checkout_create": _Spec(checkout_create, auth=True, geo=True, needs_ip=True),
    "checkout": _Spec(checkout_get),
    "create_account": _Spec(create_account),
}
