"""A 202 from the ingress always ends in an execution: fuzzed bodies on real services.

The ingress app is served by uvicorn with its real confirm publisher on this test's
RabbitMQ vhost; a Dramatiq worker in this process runs the trigger actor (and the dead
letter middleware) on the same vhost and PostgreSQL database. Hypothesis writes JSON
bodies as text, so that numbers, strings and nesting can be spelled the ways senders
spell them: integers and floats at and past every limit (int32, int64, 2^53, doubles,
overflow to infinity, underflow, Python's 4300-digit cap), unicode edge cases (NUL, lone
and paired surrogates escaped or encoded, noncharacters, astral characters), nesting
around the depth cap, bodies around the size cap, several encodings, and delivery ids
around the dedup key's length. Every body is correctly signed. The ingress may refuse a
body (413, 422) or a header (401); whatever it answers 202 for must become an execution.

``test_a_trigger_postgres_cannot_store_becomes_a_visible_dead_letter`` bypasses the
ingress: a trigger message whose data PostgreSQL cannot store (published as another
producer might), and bytes that are no Dramatiq message at all, are still recorded as
dead letters that ``shiftflow dead-letters list`` shows, with the message's text kept.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import psycopg2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.signatures import MAX_DELIVERY_ID, signed_headers
from shiftflow.models.manage import catalog, replay
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables import webhook_secrets
from shiftflow.producers.ingress.app import create_app
from tests.integration.api_support import serve, worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

#: A workflow whose first step stores the whole trigger again (a transform runs inline in
#: the trigger actor), so the data also goes into a step output and its log document.
ECHO = {
    "name": "echo",
    "trigger": {"type": "webhook"},
    "steps": [{"id": "echo", "type": "transform", "with": {"output": {"data": "{{ trigger }}"}}}],
}
#: Body limit of this test's ingress (the default, 256 KiB).
BODY_LIMIT = 262_144
EXAMPLES = 250

# --------------------------------------------------------------------------- bodies as text

_LIMIT_INTEGERS = [2**31 - 1, 2**31, -(2**31) - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
                   2**64, 10**38, 10**308, 10**309]
_LIMIT_NUMBERS = [str(n) for n in _LIMIT_INTEGERS] + [
    "1e308", "1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308", "2e308",
    "1e999", "-1e999", "1E400", "-1E+400", "4.9e-324", "5e-324", "2e-324", "1e-400", "-0", "-0.0", "0e0",
    "1.0E+2", "0." + "0" * 400 + "1", "1" + "0" * 400 + ".5",
]
NUMBERS = st.one_of(
    st.integers().map(str),
    st.sampled_from(_LIMIT_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.builds(lambda m, e: f"{m}e{e}", st.integers(-(10**20), 10**20), st.integers(-400, 400)),
    # Python turns at most 4300 digits into an int.
    st.builds(lambda n, sign: sign + "9" * n, st.integers(4295, 4305), st.sampled_from(["", "-"])),
)
_CHARACTERS = st.one_of(
    st.characters(exclude_categories=()),  # surrogates included
    st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d", "\ude00", "\ufffe", "\uffff", "\ufeff",
                     "\U0001f600", "\U0010ffff", "\u2028", "\x7f", "\\", '"']),
)
_RAW_STRINGS = st.text(_CHARACTERS, max_size=12)
STRINGS = st.one_of(
    *[_RAW_STRINGS.map(lambda s: json.dumps(s, ensure_ascii=True))] * 3,  # \u escapes for all of them
    *[_RAW_STRINGS.map(lambda s: json.dumps(s, ensure_ascii=False))] * 3,  # as characters in the body
    # An escaped surrogate pair (one valid character), NUL, and plain keys.
    st.sampled_from(['"\\ud83d\\ude00"', '"\\u0000"', '"k"', '""']),
)
LEAVES = st.one_of(st.sampled_from(["null", "true", "false"]), NUMBERS, STRINGS)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(_array),
                            st.lists(st.tuples(STRINGS, inner), max_size=4).map(_object)),
    max_leaves=16,
)
#: Nesting around the ingress's cap (64 levels, the body object included).
DEEP = st.builds(
    lambda depth, leaf, kinds: "".join("[" if k else '{"k":' for k in kinds[:depth])
    + leaf
    + "".join("]" if k else "}" for k in reversed(kinds[:depth])),
    st.integers(58, 68),
    LEAVES,
    st.lists(st.booleans(), min_size=68, max_size=68),
)
#: Strings that bring the body around its size cap.
LARGE = st.integers(BODY_LIMIT - 3000, BODY_LIMIT + 10).map(lambda n: '"' + "a" * n + '"')
MEMBERS = st.one_of(*[VALUES] * 14, DEEP, DEEP, LARGE)  # one_of picks a branch uniformly
DOCUMENTS = st.lists(st.tuples(STRINGS, MEMBERS), max_size=5).map(_object)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32"])
DELIVERY_ID_PADDING = st.one_of(st.just(0), st.integers(MAX_DELIVERY_ID - 30, MAX_DELIVERY_ID + 15))


def encode(text: str, encoding: str) -> bytes:
    """``text`` in ``encoding``; lone surrogates written as their (invalid) UTF-8 bytes."""
    return text.encode(encoding, "surrogatepass")


# --------------------------------------------------------------------------- the rig


class Trail:
    """Where a trigger went: its execution, a dead letter, or RabbitMQ's dead-letter queue."""

    def __init__(self, pg_url: str, amqp_url: str) -> None:
        self.db = psycopg2.connect(pg_url)
        self.db.autocommit = True
        self.amqp = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.amqp.channel()

    def execution(self, key: str) -> str | None:
        with self.db.cursor() as cur:
            cur.execute("SELECT status FROM execution WHERE dedup_key = %s", (key,))
            row = cur.fetchone()
        return row[0] if row else None

    def dead_letters(self) -> list[dict[str, Any]]:
        """Dead letters as ``shiftflow dead-letters list`` shows them (the operator sees all)."""
        return [replay.dead_letter_dict(replay.get_dead_letter(Principal.operator(), d["id"]), payload=True)
                for d in replay.list_dead_letters(Principal.operator(), limit=200).items]

    def parked(self) -> int:
        """Messages in ``triggers.XQ``: RabbitMQ's dead-letter queue, which forgets after 7 days."""
        return int(self.channel.queue_declare("triggers.XQ", passive=True).method.message_count)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.amqp.close()
        self.db.close()


def outcome(trail: Trail, key: str, parked_before: int, timeout: float = 30.0) -> str:
    """``execution`` once the key's execution exists; ``parked`` when its message reached
    the dead-letter queue without an execution (after a grace for its dead letter)."""
    deadline = time.monotonic() + timeout
    parked_at: float | None = None
    while time.monotonic() < deadline:
        if trail.execution(key) is not None:
            return "execution"
        if parked_at is None and trail.parked() > parked_before:
            parked_at = time.monotonic()
        if parked_at is not None and time.monotonic() - parked_at > 2.0:
            return "parked"
        time.sleep(0.02)
    return "nothing"


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, amqp_url: str) -> Iterator[tuple[str, Any, Trail]]:
    """(ingress base URL, the webhook, a trail reader) with a worker running."""
    with worker(real_env, threads=4) as app_settings:
        workflow = catalog.apply_definition(catalog.ensure_workspace("fuzz"), ECHO).workflow
        hook = catalog.create_webhook(workflow)
        with serve(create_app(app_settings)) as base:
            trail = Trail(pg_url, amqp_url)
            try:
                yield base, hook, trail
            finally:
                trail.close()


def test_every_202_ends_in_an_execution(rig: tuple[str, Any, Trail]) -> None:
    base, hook, trail = rig
    secret = webhook_secrets.reveal(hook)[0]
    serial = itertools.count()
    seen: dict[int, int] = {}
    client = httpx.Client(timeout=30)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(document=DOCUMENTS, encoding=ENCODINGS, padding=DELIVERY_ID_PADDING)
    @example(document='{"x": 1e999}', encoding="utf-8", padding=0)
    @example(document='{"x": [-1E400, 1.8e308]}', encoding="utf-8", padding=0)
    @example(document='{"n": ' + "9" * 4300 + "}", encoding="utf-8", padding=0)
    @example(document='{"n": 18446744073709551616, "m": -9223372036854775809}', encoding="utf-8", padding=0)
    @example(document='{"x": 5e-324, "y": 1e-400, "z": -0.0}', encoding="utf-16", padding=0)
    @example(document='{"s": "\\ud83d\\ude00 \\ufffe \\uffff"}', encoding="utf-8", padding=0)
    @example(document='{"k": 1}', encoding="utf-8", padding=MAX_DELIVERY_ID)
    def check(document: str, encoding: str, padding: int) -> None:
        body = encode(document, encoding)
        n = next(serial)
        delivery = f"d{n}-" + "x" * max(0, padding - len(f"d{n}-"))
        headers = {**signed_headers("standard", secret, body, int(time.time()), delivery),
                   "content-type": "application/json"}
        parked_before = trail.parked()
        response = client.post(f"{base}/hooks/{hook.token}", content=body, headers=headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code in (202, 401, 413, 422), (response.status_code, response.text)
        if response.status_code == 401:
            assert len(delivery) > MAX_DELIVERY_ID, response.text  # only the over-long delivery ids
            return
        if response.status_code != 202:
            return
        key = response.json()["execution_key"]
        went = outcome(trail, key, parked_before)
        assert went == "execution", (
            f"202 for {key} but {went}: body {body[:300]!r}; dead letters "
            f"{[(d['error'] or '')[-300:] for d in trail.dead_letters()][-3:]}"
        )

    try:
        check()
    finally:
        client.close()
        print(f"\nanswers: {dict(sorted(seen.items()))}")
    # The bodies must have reached every side of the checks, or this proved little.
    assert seen.get(202, 0) >= 30 and seen.get(422, 0) >= 10 and seen.get(413, 0) >= 1, seen


def test_a_trigger_postgres_cannot_store_becomes_a_visible_dead_letter(rig: tuple[str, Any, Trail]) -> None:
    """A trigger message that reaches the worker with data PostgreSQL cannot store (not through
    the ingress, which refuses it) is a dead letter ``shiftflow dead-letters list`` shows."""
    _, hook, trail = rig
    cases = {
        "standard:inf": {"x": math.inf},
        "standard:nul": {"x": "a\x00b", "k\x00": 1},
        "standard:surrogate": {"x": "\ud800"},
    }
    for key, data in cases.items():
        send("triggers.start", TriggerPayload(str(hook.workflow_id), key, "test", data))
    # And bytes that are no Dramatiq message at all, as a stray producer might send.
    raw = b'\xff\x00{"not": "a message"}'
    trail.channel.basic_publish("", "triggers", raw, pika.BasicProperties(delivery_mode=2, message_id="stray-1"))

    def letters() -> list[dict[str, Any]]:
        found = trail.dead_letters()
        return found if len(found) == len(cases) + 1 else []

    found = wait_until(letters, timeout=30, message="a dead letter per unstorable trigger")
    assert all(trail.execution(key) is None for key in cases)
    [stray] = [letter for letter in found if letter["actor"] == "(undecodable)"]
    assert stray["message_id"] == "stray-1" and stray["queue"] == "triggers"
    assert stray["payload"]["text"] == '\\xff\\x00{"not": "a message"}'
    found.remove(stray)
    for letter in found:
        assert letter["actor"] == "triggers.start" and letter["queue"] == "triggers"
        assert letter["error"]
        payload = letter["payload"]
        assert payload["unstorable"].startswith("contains ")
        # The message's text is kept, escaped so that PostgreSQL can store it, and the
        # workflow id stays where workspace-scoped listings look for it.
        decoded = json.loads(payload["text"])
        assert decoded["kwargs"]["payload"]["dedup_key"] in cases
        assert decoded["kwargs"]["payload"]["data"].keys() == cases[decoded["kwargs"]["payload"]["dedup_key"]].keys()
        assert payload["kwargs"]["payload"]["workflow_id"] == str(hook.workflow_id)
    workspace = Principal.operator(hook_workspace(hook))
    assert len(replay.list_dead_letters(workspace).items) == len(cases)
    report = replay.replay_dead_letters(Principal.operator(), send, dry_run=True)
    assert report.replayed == [] and len(report.skipped) == len(cases) + 1
    assert all("could not be stored" in s["reason"] for s in report.skipped)


def hook_workspace(hook: Any) -> Any:
    """The workspace id of ``hook``'s workflow."""
    from shiftflow.models.tables.workflows import Workflow

    return Workflow.get_by_id(hook.workflow_id).workspace_id
