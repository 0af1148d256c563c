"""Model-based test: no sequence of operator actions places a second order for a swap.

Each sequence starts one execution of a swap workflow (a fixed swap, a variable swap, or
a ``for_each`` of two fixed swaps) with a manual trigger and an idempotency key, then
applies 5-12 random actions of workers, operators and SideShift:

* workers deliver queued messages in a random order, die at a failpoint around the create
  call (``step.before_work``, ``sideshift.before_create``/``after_create``/``after_commit``),
  deliver a message twice at the same moment, or give up on one (a dead letter);
* operators cancel (also during the quote or the create call), re-run (API or CLI model
  function, with and without an idempotency key, repeated with the same key), re-run from
  two API clients at the same moment, force a second active re-run the way re-runs were
  made before this rule existed, replay dead letters (API or model), reconcile orders
  with what SideShift really holds, repeat the manual trigger with its key, time out a
  step or the execution, and sweep (``shiftflow sideshift poll --due``);
* SideShift settles, refunds or expires shifts, answers 5xx before or after creating, drops
  the connection after creating, answers after the client's timeout, refuses.

Then the world settles (``Driver.quiesce``) and the sequence is judged against the fake's
own ledger, never ShiftFlow's opinion: for each swap identity (the lineage root found by
following ``parent`` links, the step, the iteration), no shift was created while an earlier
shift of the same identity could still hold money (anything but refunded, or expired with
no deposit), at most one settled, every shift has exactly one order, every order is final
or marked for reconciliation, ShiftFlow's view of each shift matches the fake's, and a
swap step that succeeded names a settled shift.

Real PostgreSQL (locks and all), RabbitMQ (what the API publishes), Redis (the SideShift
rate limiter), SecantusDB (execution logs) and fake SideShift servers over HTTP (half of
them accept a reused quote); the workers are the test's own loops (``swap_model.Driver``,
four side by side on the one database) so that a thousand sequences fit in minutes.

``SHIFTFLOW_TEST_SEED`` replays a run (the seed is printed; which driver runs a sequence,
and the interleaving of concurrent ones, may differ), ``SHIFTFLOW_TEST_MODEL_SEQUENCES``
sets the count (default 1000), ``SHIFTFLOW_TEST_MODEL_DRIVERS`` the drivers running side by
side (default 4), and ``SHIFTFLOW_TEST_MODEL_ONLY=N`` runs sequence N alone.
Run with ``-s`` to see the counts::

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/reliability/test_swap_model.py
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shiftflow import actors
from shiftflow.fakes.sideshift import FakeSideShiftServer, Timings
from shiftflow.fakes.sideshift_behaviour import FakeBehaviour
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.mongo import MongoSink, configure_sink
from shiftflow.kernel.redis_handle import configure_redis
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import catalog
from shiftflow.models.swaps import orders
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder, SideShiftSwap
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve
from tests.integration.swap_support import BTC, swap_inputs
from tests.reliability.swap_model import (
    CRASH_POINTS,
    CREATE_ROUTES,
    Driver,
    Fleet,
    LedgerFake,
    active_reruns,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

SEED = int(os.environ.get("SHIFTFLOW_TEST_SEED") or random.SystemRandom().randrange(2**31))
SEQUENCES = int(os.environ.get("SHIFTFLOW_TEST_MODEL_SEQUENCES", "1000"))
ONLY = os.environ.get("SHIFTFLOW_TEST_MODEL_ONLY")
WORKERS = 1 if ONLY else int(os.environ.get("SHIFTFLOW_TEST_MODEL_DRIVERS", "4"))
TIMEOUT = 0.5  # the SideShift client's read timeout; a held create answer outlasts it
FINAL_ORDER = ("SETTLED", "REFUNDED", "EXPIRED", "FAILED", "NEEDS_RECONCILIATION")
RERUNNABLE = ("FAILED", "CANCELLED", "TIMED_OUT")
SHIFT_STATE = {"settled": "SETTLED", "refunded": "REFUNDED", "expired": "EXPIRED"}


def _definition(kind: str) -> dict[str, Any]:
    swap: dict[str, Any] = {"id": "swap", "type": "sideshift_swap", "timeout": 600, "retry": {"max": 2, "backoff": 0.1}}
    if kind == "variable":
        swap["with"] = swap_inputs(type="variable", amount=None)
    elif kind == "basket":
        swap.update(for_each="{{ trigger.to }}", concurrency=2, **{"with": swap_inputs(settle_address="{{ item }}")})
    else:
        swap["with"] = swap_inputs()
    return {
        "name": f"model-{kind}",
        "trigger": {"type": "manual"},
        "timeout": 3600,
        "steps": [
            {"id": "prep", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
            swap,
        ],
    }


@pytest.fixture
def fleet(real_env: dict[str, str]) -> Iterator[Fleet]:
    fakes = [
        LedgerFake(
            enforce_rate_limits=False,
            timings=Timings(confirm=1, process=1, settle=1, refund_start=1, refund_confirm=1),
            seed=SEED * 16 + i,  # shift ids differ between the fakes
            # Half the fakes accept a reused quote and answer 400 for an unknown shift: money
            # safety must not depend on SideShift refusing anything.
            behaviour=FakeBehaviour(
                reused_quote=("refuse", "accept")[i % 2], unknown_shift_status=(404, 400)[i % 2]
            ),
        )
        for i in range(WORKERS)
    ]
    servers = [FakeSideShiftServer(fake).start() for fake in fakes]
    env = {
        **real_env,
        "SHIFTFLOW_SIDESHIFT_BASE_URL": servers[0].base_url,
        "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID": fakes[0].affiliate_id,
        "SHIFTFLOW_SIDESHIFT_POLL_SECONDS": "0.05",
        "SHIFTFLOW_SIDESHIFT_POLL_MAX_SECONDS": "0.05",
        "SHIFTFLOW_SIDESHIFT_SHIFTS_PER_MINUTE": "1000000",
        "SHIFTFLOW_SIDESHIFT_QUOTES_PER_MINUTE": "1000000",
        "SHIFTFLOW_SIDESHIFT_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    settings = configure(Settings.from_env(env))
    db = bind_database(settings.database_url)
    configure_redis(settings.redis_url)
    broker = install(build_broker(settings, worker=False))
    for queue in {actor.queue_name for actor in actors.declare(broker).values()}:
        broker.declare_queue(queue, ensure=True)  # the drivers take what the API publishes from them
    sink = MongoSink(settings.mongo_url, settings.mongo_db)
    configure_sink(sink)
    tenant = seed_tenant("model", roles=("OWNER", "MEMBER"))
    workflows = {
        kind: catalog.apply_definition(tenant.workspace, _definition(kind)).workflow.id
        for kind in ("fixed", "variable", "basket")
    }
    try:
        with serve(create_app(settings)) as base:
            model = Fleet(broker, base + "/api/v1", tenant.keys, workflows)
            for fake, server in zip(fakes, servers, strict=True):
                own = dataclasses.replace(settings, sideshift_base_url=server.base_url)
                model.add(fake, orders.client_for(own))
            with model.patched():
                yield model
    finally:
        configure_sink(None)
        sink.close(10)
        broker.close()
        for server in servers:
            server.stop()
        db.close()


# -- actions ----------------------------------------------------------------------------------------


def _executions(d: Driver, root: Any, statuses: tuple[str, ...]) -> list[Execution]:
    return [e for e in d.lineage(root) if e.status in statuses]


def _fault(d: Driver, rng: random.Random) -> None:
    fault = rng.choice(["create_5xx", "create_5xx_after", "drop", "timeout", "refuse", "quote_5xx", "poll_5xx"])
    d.stats.count(f"fault:{fault}")
    status = rng.choice([500, 502, 503])
    if fault == "create_5xx":
        d.fake.fail_next(1, status=status, routes=CREATE_ROUTES)
    elif fault == "create_5xx_after":
        d.fake.fail_next(1, status=status, after_effect=True, routes=CREATE_ROUTES)
    elif fault == "drop":
        d.fake.drop_next_create()
    elif fault == "timeout":
        d.fake.delay_next_create(TIMEOUT + 0.3)
    elif fault == "refuse":
        d.fake.fail_next(1, status=400, routes=CREATE_ROUTES)
    elif fault == "quote_5xx":
        d.fake.fail_next(1, status=503, routes=["quotes"])
    else:
        d.fake.fail_next(1, status=502, routes=["shift"])
    d.work(rng.randint(1, 4))


def _crash(d: Driver, rng: random.Random) -> None:
    d.armed_crash = rng.choice(CRASH_POINTS)
    d.work(rng.randint(1, 4))
    d.armed_crash = None


def _cancel_during(d: Driver, rng: random.Random) -> None:
    d.armed_hook = rng.choice(["quote", "create"])
    d.work(rng.randint(1, 4))
    d.armed_hook = None


def _cancel(d: Driver, rng: random.Random, root: Any) -> None:
    running = _executions(d, root, ("PENDING", "RUNNING"))
    if running:
        d.cancel(rng.choice(running).id)


def _rerun(d: Driver, rng: random.Random, root: Any, key: str) -> None:
    targets = _executions(d, root, RERUNNABLE)
    if not targets:
        return
    target = rng.choice(targets).id
    before = {e.id for e in d.lineage(root)}
    active = active_reruns(d, root)
    idem = rng.choice([None, f"{key}-r{rng.randint(0, 2)}"])
    made = d.rerun(target, idem)
    if made is None:  # a 409: only because another re-run of the lineage is active
        assert active, f"re-run of {target} refused while no re-run of lineage {root} was active"
        return
    if str(made) not in {str(i) for i in before}:
        assert not active or d.bypassed, f"re-run {made} made while {active[0].id} was active"
    if idem is not None and rng.random() < 0.5:
        again = d.rerun(target, idem)
        assert again is not None and str(again) == str(made), (made, again)


def _rerun_together(d: Driver, rng: random.Random, root: Any, key: str) -> None:
    targets = _executions(d, root, RERUNNABLE)
    if not targets:
        return
    one = rng.choice(targets).id
    two = one if rng.random() < 0.7 else rng.choice(targets).id
    mode = rng.choice(["none", "same", "different"])
    stamp = f"{key}-c{d.stats.actions.get('rerun_together', 0)}"
    keys = {"none": [None, None], "same": [stamp, stamp], "different": [stamp + "a", stamp + "b"]}[mode]
    had_active = bool(active_reruns(d, root))
    answers = d.rerun_together([one, two], keys)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 202, 409}, [a.text for a in answers]
    d.stats.conflicts += statuses.count(409)
    made = {a.json()["execution"]["id"] for a in answers if a.status_code in (200, 202)}
    if mode == "same" and one == two:
        assert len(made) <= 1, answers  # one key, one re-run
    else:
        assert statuses.count(202) <= (0 if had_active and not d.bypassed else 1 + d.bypassed), statuses


def _bypass(d: Driver, rng: random.Random, root: Any) -> None:
    targets = _executions(d, root, RERUNNABLE)
    if not targets:
        return
    d.legacy_rerun(rng.choice(targets).id)
    if rng.random() < 0.5 and not active_reruns(d, root)[1:]:
        d.legacy_rerun(rng.choice(targets).id)
    first = d.take(lambda m: m.actor == "sideshift.order")
    second = d.take(lambda m: m.actor == "sideshift.order")
    d.deliver_together([m for m in (first, second) if m is not None] or [])


def _deliver_twice(d: Driver, rng: random.Random) -> None:
    msg = d.take(lambda m: m.actor == "sideshift.order")
    if msg is not None:
        d.deliver_together([msg, msg])


def _time_out(d: Driver, root: Any) -> None:
    d.time_out(root)
    d.timers()


def _timers(d: Driver, root: Any) -> None:
    d.fast_forward(root)
    d.timers()


Action = Callable[[Driver, random.Random, Any, str, str], Any]
ACTIONS: dict[str, tuple[int, Action]] = {
    "work": (30, lambda d, rng, root, kind, key: d.work(rng.randint(1, 6))),
    "fault": (9, lambda d, rng, root, kind, key: _fault(d, rng)),
    "crash": (7, lambda d, rng, root, kind, key: _crash(d, rng)),
    "cancel_during": (5, lambda d, rng, root, kind, key: _cancel_during(d, rng)),
    "cancel": (9, lambda d, rng, root, kind, key: _cancel(d, rng, root)),
    "rerun": (12, lambda d, rng, root, kind, key: _rerun(d, rng, root, key)),
    "rerun_together": (5, lambda d, rng, root, kind, key: _rerun_together(d, rng, root, key)),
    "bypass": (2, lambda d, rng, root, kind, key: _bypass(d, rng, root)),
    "deliver_twice": (3, lambda d, rng, root, kind, key: _deliver_twice(d, rng)),
    "settle": (8, lambda d, rng, root, kind, key: (d.deposit(root, "settle"), d.fake.advance(10))),
    "refund": (3, lambda d, rng, root, kind, key: (d.deposit(root, "refund"), d.fake.advance(100))),
    "tick": (3, lambda d, rng, root, kind, key: d.fake.advance(rng.choice([5, 30, 120]))),
    "expire": (3, lambda d, rng, root, kind, key: d.fake.advance(16 * 60)),
    "time_out": (2, lambda d, rng, root, kind, key: _time_out(d, root)),
    "timers": (5, lambda d, rng, root, kind, key: _timers(d, root)),
    "dead_letter": (3, lambda d, rng, root, kind, key: d.dead_letter()),
    "replay": (3, lambda d, rng, root, kind, key: d.replay()),
    "reconcile": (6, lambda d, rng, root, kind, key: d.reconcile(root)),
    "repeat_trigger": (2, lambda d, rng, root, kind, key: None),  # in _sequence: it needs the data
    "sweep": (2, lambda d, rng, root, kind, key: d.sweep()),
}
_NAMES = list(ACTIONS)
_WEIGHTS = [ACTIONS[n][0] for n in _NAMES]


def _sequence(d: Driver, n: int) -> Any:
    rng = random.Random(f"{SEED}:{n}")
    d.rng, d.dead, d.bypassed = rng, [], False
    kind = rng.choices(["fixed", "variable", "basket"], [6, 2, 2])[0]
    key = f"s{SEED}-{n}"
    data = {"n": n, "to": [BTC, "bc1q" + "p" * 38]} if kind == "basket" else {"n": n}
    root = d.start(kind, key, data)
    for _ in range(rng.randint(5, 12)):
        name = rng.choices(_NAMES, _WEIGHTS)[0]
        d.stats.count(name)
        with d.stats.timed(name):
            if name == "repeat_trigger":
                d.repeat_trigger(kind, key, data)
            else:
                ACTIONS[name][1](d, rng, root, kind, key)
        if name.startswith("rerun") and not d.bypassed:
            assert len(active_reruns(d, root)) <= 1, d.describe(root)
    return root


# -- the checker -------------------------------------------------------------------------------------


def _lineage_by_parents(root: Any) -> set[Any]:
    """The root and every re-run below it, found by ``parent`` links (not ``lineage_root``)."""
    found, frontier = {root}, [root]
    while frontier:
        children = [
            e.id
            for e in Execution.select(Execution.id).where(Execution.parent.in_(frontier) & (Execution.source == "rerun"))
        ]
        frontier = [c for c in children if c not in found]
        found.update(frontier)
    return found


def _judge(d: Driver, root: Any, seen: Counter[str]) -> tuple[int, int, list[str]]:
    """(orders, shifts, problems) of one settled sequence (module docstring); ``seen`` counts
    what the sequence exercised (adoptions, swaps ordered again, waits for an operator)."""
    problems: list[str] = []
    lineage = _lineage_by_parents(root)
    orders = list(SideShiftOrder.select().where(SideShiftOrder.execution.in_(list(lineage))))
    by_external = {o.external_id: o for o in orders}
    identity: dict[Any, tuple[str, int]] = {}
    for order in orders:
        if order.state not in FINAL_ORDER:
            problems.append(f"order {order.id} is {order.state}: neither final nor marked for reconciliation")
        swap = SideShiftSwap.get_or_none(SideShiftSwap.id == order.__data__.get("swap"))
        if swap is None or str(swap.root_execution) != str(root):
            problems.append(f"order {order.id} is not in its lineage's swap (root {root})")
        else:
            identity[order.id] = (swap.step_id, swap.iteration)
    shifts = list(d.fake.shifts.values())  # this sequence's, in creation order
    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for shift in shifts:
        order = by_external.get(shift.external_id)
        if order is None:
            problems.append(f"shift {shift.id} (externalId {shift.external_id}) has no order")
            continue
        if d.fake.created_by_external_id[shift.external_id] != 1:
            problems.append(f"externalId {shift.external_id} backs {d.fake.created_by_external_id[shift.external_id]} shifts")
        groups[identity.get(order.id, ("?", -1))].append(shift)
        if order.shift_id is not None and order.shift_id != shift.id:
            problems.append(f"order {order.id} names shift {order.shift_id}, the fake made {shift.id} for it")
        if order.state in SHIFT_STATE.values() and SHIFT_STATE.get(shift.status) != order.state:
            problems.append(f"order {order.id} is {order.state}, its shift {shift.id} is {shift.status}")
    for ident, group in groups.items():
        for k, shift in enumerate(group):
            for earlier in group[:k]:
                status, deposit = d.fake.births[shift.id][earlier.id]
                if not (status == "refunded" or (status == "expired" and not deposit)):
                    problems.append(
                        f"swap {ident}: shift {shift.id} ({shift.external_id}) was created while shift "
                        f"{earlier.id} ({earlier.external_id}) was {status}{' with a deposit' if deposit else ''}"
                    )
        if sum(s.status == "settled" for s in group) > 1:
            problems.append(f"swap {ident}: {sum(s.status == 'settled' for s in group)} shifts settled")
    placed_by = {str(o.id): str(o.execution_id) for o in orders}
    seen["swaps ordered more than once"] += sum(
        1 for n in Counter(identity.values()).values() if n > 1
    )
    for step in StepExecution.select().where(
        StepExecution.execution.in_(list(lineage)) & (StepExecution.step_type == "sideshift_swap")
    ):
        order_id = step.output.get("order_id") if isinstance(step.output, dict) else None
        if order_id is not None and placed_by.get(order_id) not in (None, str(step.execution_id)):
            seen[f"steps adopting an order ({step.status.lower()})"] += 1
        if step.status == "WAITING" and (step.wait_key or "").startswith("sideshift:reconcile:"):
            seen["steps waiting for a reconciliation"] += 1
    swaps = StepExecution.select().where(
        StepExecution.execution.in_(list(lineage))
        & (StepExecution.step_type == "sideshift_swap")
        & (StepExecution.status == "SUCCEEDED")
    )
    for step in swaps:
        if isinstance(step.output, dict):
            shift = d.fake.shifts.get(step.output.get("shift_id"))
            if shift is None or shift.status != "settled":
                problems.append(f"step {step.step_id}#{step.iteration} of {step.execution_id} succeeded on "
                                f"shift {step.output.get('shift_id')}, which is {shift.status if shift else 'unknown'}")
    return len(orders), len(shifts), problems


def _run(driver: Driver, numbers: list[int], totals: Counter[str]) -> None:
    """One driver's share of the sequences, each judged as soon as it settled."""
    driver.fleet.local.driver = driver
    driver.thread_id = threading.get_ident()
    try:
        for n in numbers:
            with driver.stats.timed("sequence"):
                root = _sequence(driver, n)
            with driver.stats.timed("quiesce"):
                driver.quiesce(root)
            with driver.stats.timed("judge"):
                count, made, problems = _judge(driver, root, driver.stats.seen)
            assert not problems, (
                f"sequence {n} (SHIFTFLOW_TEST_SEED={SEED} SHIFTFLOW_TEST_MODEL_ONLY={n}):\n  "
                + "\n  ".join(problems)
                + "\n"
                + driver.describe(root)
            )
            with driver.fleet.lock:
                totals["sequences"] += 1
                totals["orders"] += count
                totals["shifts"] += made
                for o in SideShiftOrder.select(SideShiftOrder.state).where(
                    SideShiftOrder.execution.in_(list(_lineage_by_parents(root)))
                ):
                    totals[f"order {o.state}"] += 1
            driver.fake.archive()
    finally:
        database.close()


@pytest.mark.timeout(900)
def test_no_operator_action_places_a_second_order_for_a_swap(fleet: Fleet) -> None:
    print(f"\nswap model: SHIFTFLOW_TEST_SEED={SEED}, {WORKERS} drivers", flush=True)
    numbers = [int(ONLY)] if ONLY else list(range(SEQUENCES))
    started = time.monotonic()
    totals: Counter[str] = Counter()
    errors: list[BaseException] = []

    def run(driver: Driver, share: list[int]) -> None:
        try:
            _run(driver, share, totals)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(driver, numbers[i :: len(fleet.drivers)]), name=f"driver-{i}")
        for i, driver in enumerate(fleet.drivers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    # Every shift any fake made has exactly one order, and no externalId or quote backs two shifts.
    for driver in fleet.drivers:
        assert driver.fake.double_orders() == {}
        made = {s.external_id for s in [*driver.fake.archived.values(), *driver.fake.shifts.values()]}
        known = {o.external_id for o in SideShiftOrder.select().where(SideShiftOrder.external_id.in_(list(made)))}
        assert made == known, f"shifts without an order: {sorted(made - known)[:5]}"
    took = time.monotonic() - started
    stats = [d.stats for d in fleet.drivers]
    actions: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for one in stats:
        actions.update(one.actions)
        seconds.update(one.seconds)
        seen.update(one.seen)
    states = {k.split(" ", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("order ")}
    print(
        f"swap model: {totals['sequences']} sequences, {totals['orders']} orders ({states}), "
        f"{totals['shifts']} shifts created, 0 second orders; {sum(s.deliveries for s in stats)} deliveries, "
        f"{sum(s.crashes for s in stats)} worker crashes, {sum(s.conflicts for s in stats)} re-runs refused "
        f"(409); {took:.1f} s (seed {SEED})\n"
        f"swap model exercised: {', '.join(f'{k} {v}' for k, v in sorted(seen.items()))}\n"
        f"swap model actions: {', '.join(f'{k} {v}' for k, v in sorted(actions.items()))}\n"
        f"swap model seconds (all drivers): {', '.join(f'{k} {v:.0f}' for k, v in sorted(seconds.items()))}",
        flush=True,
    )
    assert totals["sequences"] == len(numbers)
    assert totals["orders"] >= len(numbers) // 2  # the model really ordered
