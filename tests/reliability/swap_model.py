"""The harness of the swap model test: the fake's ledger, a worker loop, operators, faults.

* ``LedgerFake``: the fake SideShift, which also records, each time it creates a shift,
  what every shift of the current sequence looked like at that moment (status, deposit
  seen). The checker reads that, not ShiftFlow's opinion.
* ``Driver``: the workers and the operators of one test. Messages the engine returns
  are queued in memory and delivered in an order the seeded RNG picks, by the functions
  the actors call (``run_step.run_step`` then ``order_ops.after_delivery``,
  ``order_ops.poll_for_step``, ``run_trigger.run_trigger``); messages the management API
  publishes go through the real RabbitMQ vhost and are taken from it (``basic_get``).
  A worker crash is a ``WorkerCrash`` raised at a real failpoint (``failpoints.hit``):
  nothing after that point runs, the transaction in progress rolls back, and the message
  is delivered again. Operators act through the model functions the CLI uses and
  through the HTTP management API (two API keys, so two clients).
* ``Fleet``: several drivers, each in its own thread with its own fake SideShift (its own
  clock and ledger), running sequences side by side on the one database, broker and API.
  A message goes to the driver whose sequence owns its execution, whoever produced it
  (the timer loop's and the sweep's functions see every sequence's rows), and a poll of
  a shift goes to the fake that holds it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import dramatiq
import httpx
import pika.exceptions

from shiftflow.fakes.sideshift import FakeSideShift
from shiftflow.kernel import failpoints
from shiftflow.kernel.contracts import ACTORS, decode
from shiftflow.kernel.db import database
from shiftflow.kernel.enqueue import Outgoing, build_message
from shiftflow.kernel.steps import TERMINAL
from shiftflow.models.engine import run_step as stepwork
from shiftflow.models.engine import runs, waits
from shiftflow.models.engine.run_trigger import run_trigger
from shiftflow.models.manage import control, replay
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict
from shiftflow.models.swaps import order_ops, order_status
from shiftflow.models.swaps.orders import ReconcileError
from shiftflow.models.tables import dead_letters
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder

OPERATOR = Principal.operator()
CREATE_ROUTES = ("shifts_fixed", "shifts_variable")
#: The failpoints a worker may die at, around a swap step's create call.
CRASH_POINTS = (
    "step.before_work",
    "sideshift.before_create",
    "sideshift.after_create",
    "sideshift.after_commit",
)


class WorkerCrash(BaseException):
    """The worker process dies here: nothing after this point runs, the message comes back."""


class LedgerFake(FakeSideShift):
    """The fake SideShift plus a record, per created shift, of the shifts before it.

    ``births[shift id]`` maps every shift of the current sequence that existed when the
    shift was created to ``(status, deposit seen)`` at that moment. ``archive`` ends a
    sequence: its shifts leave the live set (kept in ``archived``), so each request ticks
    only the current sequence's shifts.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.births: dict[str, dict[str, tuple[str, bool]]] = {}
        self.archived: dict[str, Any] = {}

    def record_shift(self, shift: Any) -> None:
        with self.lock:
            self.births[shift.id] = {sid: (s.status, bool(s.deposits)) for sid, s in self.shifts.items()}
            super().record_shift(shift)

    def archive(self) -> None:
        with self.lock:
            self.archived.update(self.shifts)
            self.shifts.clear()
            self.requests.clear()

    def shift_by_external_id(self, external_id: str) -> Any:
        with self.lock:
            found = [s for s in self.shifts.values() if s.external_id == external_id]
        assert len(found) <= 1, f"two shifts for externalId {external_id}"
        return found[0] if found else None


@dataclass
class Msg:
    """A message in the in-memory queue (a step, poll or trigger message)."""

    actor: str
    payload: Any


@dataclass
class Stats:
    """What the sequences did, for the test's output."""

    actions: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    crashes: int = 0
    conflicts: int = 0

    def count(self, name: str) -> None:
        self.actions[name] = self.actions.get(name, 0) + 1

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started


class HookedClient:
    """The SideShift client the swap code gets: quotes and creates go to the calling driver's
    fake, after its hook (an armed cancel lands there); a shift is fetched from the fake
    that holds it."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def request_quote(self, **kwargs: Any) -> Any:
        driver = self.fleet.current()
        driver.on_call("quote")
        return driver.client.request_quote(**kwargs)

    def create_fixed_shift(self, **kwargs: Any) -> Any:
        driver = self.fleet.current()
        driver.on_call("create")
        return driver.client.create_fixed_shift(**kwargs)

    def create_variable_shift(self, **kwargs: Any) -> Any:
        driver = self.fleet.current()
        driver.on_call("create")
        return driver.client.create_variable_shift(**kwargs)

    def get_shift(self, shift_id: str) -> Any:
        return self.fleet.holder(shift_id).client.get_shift(shift_id)


class Driver:
    """Workers, operators and fault injection of the model test (module docstring)."""

    def __init__(self, fleet: Fleet, fake: LedgerFake, client: Any) -> None:
        self.fleet, self.fake, self.client = fleet, fake, client
        self.broker, self.keys, self.workflow_ids = fleet.broker, fleet.keys, fleet.workflow_ids
        self.thread_id = 0
        self.queue: list[Msg] = []
        self.delayed: list[Msg] = []
        self.lock = threading.Lock()
        self.rng = random.Random(0)
        self.stats = Stats()
        self.armed_crash: str | None = None
        self.armed_hook: str | None = None
        self.current = threading.local()
        self.dead: list[Any] = []  # dead-letter ids of the current sequence, not replayed yet
        self.bypassed = False  # a second active re-run was forced in this sequence
        self.clients = {role: httpx.Client(base_url=fleet.api, timeout=30) for role in self.keys}
        self.api_used = False

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    # -- the in-memory queue and the workers ----------------------------------------------------

    def push(self, outgoing: list[Outgoing]) -> None:
        """Queue what was published, with the driver owning its execution; a delayed message
        waits until time passes (``fast_forward``)."""
        for out in outgoing:
            self.fleet.owner(out.payload, self).put(Msg(out.actor, out.payload), delayed=bool(out.delay_ms))

    def put(self, msg: Msg, *, delayed: bool = False) -> None:
        with self.lock:
            (self.delayed if delayed else self.queue).append(msg)

    def send(self, actor: str, payload: Any, *, priority: int = 0, delay_ms: int | None = None) -> str:
        """``kernel.enqueue.send`` for replayed dead letters: into the in-memory queue."""
        self.push([Outgoing(actor, payload)])
        return uuid.uuid4().hex

    def take(self, pick: Callable[[Msg], bool] | None = None) -> Msg | None:
        with self.lock:
            choices = [i for i, m in enumerate(self.queue) if pick is None or pick(m)]
            if not choices:
                return None
            return self.queue.pop(self.rng.choice(choices))

    def deliver(self, msg: Msg) -> None:
        """Run one message as its actor does; a crash puts it back (RabbitMQ redelivers it)."""
        self.stats.deliveries += 1

        self.current.execution_id = getattr(msg.payload, "execution_id", None)
        try:
            if msg.actor == "sideshift.order":
                out = stepwork.run_step(msg.payload)
                self.push(out)
                out = order_ops.after_delivery(msg.payload)
            elif msg.actor == "sideshift.poll":
                out = order_ops.poll_for_step(msg.payload)
            elif msg.actor == "steps.run":
                out = stepwork.run_step(msg.payload)
            elif msg.actor == "triggers.start":
                out = run_trigger(msg.payload)
            else:
                raise AssertionError(f"the model does not run {msg.actor}")
            self.push(out)
        except WorkerCrash:
            self.stats.crashes += 1
            self.put(msg)
        finally:
            self.current.execution_id = None

    def work(self, limit: int) -> int:
        done = 0
        while done < limit:
            msg = self.take()
            if msg is None:
                break
            self.deliver(msg)
            done += 1
        return done

    def deliver_together(self, msgs: list[Msg]) -> None:
        """Deliver messages in threads at the same moment (real PostgreSQL locks decide)."""
        barrier = threading.Barrier(len(msgs))
        errors: list[BaseException] = []

        def run(msg: Msg) -> None:
            self.fleet.local.driver = self
            try:
                barrier.wait(10)
                self.deliver(msg)
            except BaseException as exc:  # reported in the test's thread
                errors.append(exc)
            finally:
                database.close()

        threads = [threading.Thread(target=run, args=(m,)) for m in msgs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if errors:
            raise errors[0]

    # -- failpoints and client hooks -------------------------------------------------------------

    def failpoint(self, point: str, key: str = "") -> None:
        """``failpoints.hit`` in this driver's thread: the armed point raises ``WorkerCrash`` once."""
        if self.armed_crash == point and threading.get_ident() == self.thread_id:
            self.armed_crash = None
            raise WorkerCrash(point)

    def on_call(self, kind: str) -> None:
        """Called by ``HookedClient`` before a quote or a create: an armed cancel lands here."""
        if self.armed_hook != kind or threading.get_ident() != self.thread_id:
            return
        self.armed_hook = None
        execution_id = self.current.execution_id
        if execution_id is not None:
            with contextlib.suppress(Conflict):
                self.push(control.cancel(OPERATOR, execution_id)[1])

    def disarm(self) -> None:
        self.armed_crash = self.armed_hook = None
        self.fake.fail_next(0)
        self.fake.take_create_faults()

    # -- RabbitMQ (what the management API published) --------------------------------------------

    def drain_broker(self) -> int:
        """Take every message the API published off RabbitMQ into the in-memory queues."""
        if not self.api_used:
            return 0
        self.api_used = False
        taken = 0
        for queue in sorted({spec.queue for spec in ACTORS.values()}):
            for name in (queue, f"{queue}.DQ"):
                while self._take_one(name):
                    taken += 1
        return taken

    def _take_one(self, queue: str) -> bool:
        for attempt in range(3):
            try:
                channel = self.broker.channel  # type: ignore[attr-defined]
                method, _props, body = channel.basic_get(queue=queue, auto_ack=False)
                if method is None:
                    return False
                message = dramatiq.Message.decode(body)
                payload = decode(ACTORS[message.actor_name].payload, message.kwargs["payload"])
                self.fleet.owner(payload, self).put(Msg(message.actor_name, payload))
                channel.basic_ack(method.delivery_tag)
                return True
            except pika.exceptions.AMQPError:
                # An idle connection dropped (a heartbeat missed on a busy machine): reconnect.
                # An unacknowledged message comes back; a duplicate in the queue is harmless.
                del self.broker.channel  # type: ignore[attr-defined]
                del self.broker.connection  # type: ignore[attr-defined]
                if attempt == 2:
                    raise
        return False

    # -- the lineage -----------------------------------------------------------------------------

    def lineage(self, root: Any) -> list[Execution]:
        """The executions of ``root``'s re-run lineage, oldest first."""
        query = Execution.select().where((Execution.id == root) | (Execution.lineage_root == root))
        return sorted(query, key=lambda e: e.created_at)

    def fast_forward(self, root: Any) -> int:
        """Time passes for the lineage's timers: backoffs, step polls, order polls and delayed
        messages are due now."""
        with self.lock:
            released, self.delayed = self.delayed, []
            self.queue.extend(released)
        ids = [e.id for e in self.lineage(root)]
        now = utcnow()
        moved = (
            StepExecution.update(resume_at=now)
            .where(
                StepExecution.execution.in_(ids)
                & (StepExecution.status == "PENDING")
                & (StepExecution.resume_at > now)
            )
            .execute()
        )
        moved += (
            SideShiftOrder.update(next_poll_at=now)
            .where(
                SideShiftOrder.execution.in_(ids)
                & (SideShiftOrder.state == "OPEN")
                & (SideShiftOrder.next_poll_at > now)
            )
            .execute()
        )
        return moved + len(released)

    def timers(self) -> int:
        out = waits.resume_due()
        self.push(out)
        return len(out)

    def sweep(self) -> int:
        """``shiftflow sideshift poll --due``: settle orders left behind, poll due open orders."""
        swept = 0
        for _order, out in order_ops.poll_due(limit=1000):
            self.push(out)
            swept += 1
        return swept

    # -- operators -------------------------------------------------------------------------------

    def api_post(self, role: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}", **kwargs.pop("headers", {})}
        self.api_used = True
        return self.clients[role].post(path, headers=headers, **kwargs)

    def start(self, kind: str, key: str, data: dict[str, Any]) -> Any:
        """A manual trigger with an idempotency key, run by the ``triggers.start`` function."""
        payload = control.manual_trigger(OPERATOR, self.workflow_ids[kind], data, idempotency_key=key)
        out = run_trigger(payload)
        root = Execution.get(
            (Execution.workflow == self.workflow_ids[kind]) & (Execution.dedup_key == payload.dedup_key)
        ).id
        self.fleet.own(root, self)
        self.push(out)
        return root

    def repeat_trigger(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """The same manual run again with its idempotency key: through the API, or the model."""
        if self.rng.random() < 0.5:
            answer = self.api_post(
                "MEMBER",
                f"/workflows/{self.workflow_ids[kind]}/run",
                json={"input": data},
                headers={"Idempotency-Key": key},
            )
            assert answer.status_code == 202, answer.text
            self.drain_broker()
        else:
            self.start(kind, key, data)

    def cancel(self, execution_id: Any) -> None:
        if self.rng.random() < 0.5:
            answer = self.api_post("OWNER", f"/executions/{execution_id}/cancel")
            assert answer.status_code in (200, 409), answer.text
            self.drain_broker()
        else:
            with contextlib.suppress(Conflict):
                self.push(control.cancel(OPERATOR, execution_id)[1])

    def rerun(self, execution_id: Any, key: str | None) -> Any:
        """One re-run request (API or model); returns the re-run's id, or None on a 409."""
        if self.rng.random() < 0.5:
            headers = {"Idempotency-Key": key} if key else {}
            answer = self.api_post("MEMBER", f"/executions/{execution_id}/rerun", headers=headers)
            self.drain_broker()
            if answer.status_code == 409:
                self.stats.conflicts += 1
                return None
            assert answer.status_code in (200, 202), answer.text
            return answer.json()["execution"]["id"]
        try:
            made = control.start_rerun(OPERATOR, execution_id, idempotency_key=key)
        except Conflict:
            self.stats.conflicts += 1
            return None
        self.push(made.outgoing)
        return made.execution.id

    def rerun_together(self, targets: list[Any], keys: list[str | None]) -> list[httpx.Response]:
        """Two API clients (two keys) post re-runs at the same moment."""
        barrier = threading.Barrier(len(targets))
        answers: list[Any] = [None] * len(targets)
        roles = ["OWNER", "MEMBER"]

        def post(i: int) -> None:
            self.fleet.local.driver = self
            headers = {"Idempotency-Key": keys[i]} if keys[i] else {}
            barrier.wait(10)
            answers[i] = self.api_post(roles[i], f"/executions/{targets[i]}/rerun", headers=headers)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.drain_broker()
        return answers

    def legacy_rerun(self, execution_id: Any) -> Any:
        """A re-run inserted as ``control.rerun`` made them before the lineage fix (no check for an
        active re-run): the lineage then has two executions running the same swap."""
        with runs.transaction():
            old = runs.lock_execution(execution_id)
            root = old.lineage_root or old.id
            new_id, now = uuid.uuid4(), utcnow()
            Execution.insert(
                id=new_id,
                workflow=old.workflow_id,
                workflow_version=old.workflow_version,
                workspace=old.workspace_id,
                dedup_key=f"legacy-rerun:{old.id}:{new_id}",
                source="rerun",
                status="PENDING",
                priority=old.priority,
                trigger_data=old.trigger_data,
                received_at=now,
                created_at=now,
                parent=old.id,
                lineage_root=root,
            ).execute()
            new = runs.lock_execution(new_id)
            definition = runs.load_definition(new.workflow_id, new.workflow_version)
            self.push(runs.begin_running(new, definition))
        self.bypassed = True
        return new_id

    def dead_letter(self) -> bool:
        """A swap step message Dramatiq gave up on: recorded as the DeadLetters middleware does."""
        msg = self.take(lambda m: m.actor == "sideshift.order")
        if msg is None:
            return False
        message = build_message(msg.actor, msg.payload)
        dead_letters.record(message.message_id, message.queue_name, msg.actor, dict(message.asdict()), "test: gave up")
        self.dead.append(message.message_id)
        return True

    def replay(self, everything: bool = False) -> int:
        """Replay this sequence's dead letters: through the API, or the model function."""
        from shiftflow.models.tables.dead_letters import DeadLetter

        ids = [
            str(r.id)
            for r in DeadLetter.select().where(DeadLetter.message_id.in_(self.dead) & DeadLetter.replayed_at.is_null())
        ]
        if not ids:
            return 0
        if not everything:
            ids = self.rng.sample(ids, self.rng.randint(1, len(ids)))
        if not everything and self.rng.random() < 0.5:
            answer = self.api_post("OWNER", "/dead-letters/replay", json={"ids": ids})
            assert answer.status_code == 200, answer.text
            self.drain_broker()
        else:
            replay.replay_dead_letters(OPERATOR, self.send, ids=ids)
        return len(ids)

    def reconcile(self, root: Any) -> int:
        """The operator answers every order of the lineage waiting for reconciliation with what
        the fake SideShift really holds for its externalId (the shift, or none)."""
        done = 0
        ids = [e.id for e in self.lineage(root)]
        waiting = (SideShiftOrder.state == "NEEDS_RECONCILIATION") | (
            (SideShiftOrder.state == "PENDING_CREATE") & SideShiftOrder.create_sent_at.is_null(False)
        )
        for order in SideShiftOrder.select().where(SideShiftOrder.execution.in_(ids) & waiting):
            shift = self.fake.shift_by_external_id(order.external_id)
            try:
                _, out = order_ops.reconcile(
                    order.id, shift_id=shift.id if shift else None, none=shift is None, by="model"
                )
            except ReconcileError:
                continue
            self.push(out)
            done += 1
        return done

    def deposit(self, root: Any, outcome: str) -> int:
        """A user pays an open order of the lineage: the exact amount, or a wrong one (refund)."""
        ids = [e.id for e in self.lineage(root)]
        paid = 0
        for order in SideShiftOrder.select().where(
            SideShiftOrder.execution.in_(ids) & SideShiftOrder.shift_id.is_null(False)
        ):
            shift = self.fake.shifts.get(order.shift_id)
            if shift is None or shift.status != "waiting" or self.rng.random() < 0.3:
                continue
            if shift.type == "fixed":
                amount = shift.deposit_amount if outcome == "settle" else shift.deposit_amount * 2
            else:
                low = shift.deposit_min or Decimal(1)
                amount = low * 2 if outcome == "settle" else low / 10
            self.fake.deposit(shift.id, amount)
            paid += 1
        return paid

    def time_out(self, root: Any) -> int:
        """A running swap step, or the running execution, reaches its timeout now."""
        ids = [e.id for e in self.lineage(root)]
        now = utcnow()
        if self.rng.random() < 0.5:
            return (
                StepExecution.update(timeout_at=now)
                .where(StepExecution.execution.in_(ids) & (StepExecution.status == "RUNNING"))
                .execute()
            )
        return (
            Execution.update(deadline_at=now)
            .where(Execution.id.in_(ids) & Execution.status.in_(("RUNNING", "PENDING")))
            .execute()
        )

    def quiesce(self, root: Any, rounds: int = 60) -> None:
        """The world settles: faults off, dead letters replayed, every shift final on the fake's
        side, every message delivered and every timer fired until nothing moves."""
        self.disarm()
        self.replay(everything=True)
        for _ in range(rounds):
            self.fake.advance(8 * 24 * 3600)  # everything unpaid expires; paid shifts finish
            self.drain_broker()
            self.work(1000)
            self.fast_forward(root)
            self.timers()
            self.sweep()
            self.work(1000)
            if self.quiet(root):
                return
        raise AssertionError(f"lineage {root} did not settle in {rounds} rounds: {self.describe(root)}")

    def quiet(self, root: Any) -> bool:
        """Nothing left to move in the lineage: no message, no step to run, no order to follow
        (a step may wait for an operator's reconciliation)."""
        with self.lock:
            if self.queue or self.delayed:
                return False
        ids = [e.id for e in self.lineage(root)]
        busy_steps = StepExecution.select().where(
            StepExecution.execution.in_(ids) & StepExecution.status.in_(("PENDING", "RUNNING", "QUEUED"))
        )
        busy_orders = SideShiftOrder.select().where(
            SideShiftOrder.execution.in_(ids) & SideShiftOrder.state.in_(("PENDING_CREATE", "OPEN"))
        )
        return not busy_steps.exists() and not busy_orders.exists()

    def describe(self, root: Any) -> str:
        lines = []
        for execution in self.lineage(root):
            steps = StepExecution.select().where(StepExecution.execution == execution.id)
            lines.append(
                f"  execution {execution.id} {execution.source} {execution.status} {execution.error!r} steps="
                + str([(s.step_id, s.iteration, s.status, s.error) for s in steps])
            )
            for o in SideShiftOrder.select().where(SideShiftOrder.execution == execution.id):
                lines.append(f"    order {o.id} {o.external_id} {o.state} {o.sideshift_status} {o.error!r}")
        return "\n".join(lines)


def active_reruns(driver: Driver, root: Any) -> list[Execution]:
    return [e for e in driver.lineage(root) if e.source == "rerun" and e.status not in TERMINAL]


class Fleet:
    """The drivers of one test, the routing between them, and the patched entry points."""

    def __init__(self, broker: dramatiq.Broker, api: str, keys: dict[str, str], workflow_ids: dict[str, Any]) -> None:
        self.broker, self.api, self.keys, self.workflow_ids = broker, api, keys, workflow_ids
        self.drivers: list[Driver] = []
        self.local = threading.local()
        self.roots: dict[str, Driver] = {}
        self.executions: dict[str, Driver] = {}
        self.lock = threading.Lock()
        self.hooked = HookedClient(self)

    def add(self, fake: LedgerFake, client: Any) -> Driver:
        driver = Driver(self, fake, client)
        self.drivers.append(driver)
        return driver

    def current(self) -> Driver:
        driver = getattr(self.local, "driver", None)
        assert driver is not None, "swap code ran outside a driver's thread"
        return driver

    def own(self, root: Any, driver: Driver) -> None:
        with self.lock:
            self.roots[str(root)] = driver

    def owner(self, payload: Any, default: Driver) -> Driver:
        """The driver whose sequence owns the payload's execution (``default`` for a trigger)."""
        execution_id = getattr(payload, "execution_id", None)
        if execution_id is None:
            return default
        key = str(execution_id)
        with self.lock:
            found = self.executions.get(key)
        if found is not None:
            return found
        row = Execution.get_or_none(Execution.id == execution_id)
        root = str((row.lineage_root or row.id) if row is not None else execution_id)
        with self.lock:
            found = self.executions[key] = self.roots.get(root, default)
        return found

    def holder(self, shift_id: str) -> Driver:
        """The driver whose fake made the shift (the caller's when none did)."""
        for driver in self.drivers:
            if shift_id in driver.fake.shifts or shift_id in driver.fake.archived:
                return driver
        return self.current()

    def failpoint(self, point: str, key: str = "") -> None:
        driver = getattr(self.local, "driver", None)
        if driver is not None:
            driver.failpoint(point, key)

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Route failpoints and the SideShift client of the swap code through the drivers."""
        saved = (failpoints.hit, order_ops.client_for, order_status.client_for)
        failpoints.hit = self.failpoint  # type: ignore[assignment]
        order_ops.client_for = lambda settings: self.hooked  # type: ignore[assignment]
        order_status.client_for = lambda settings: self.hooked  # type: ignore[assignment]
        try:
            yield
        finally:
            failpoints.hit, order_ops.client_for, order_status.client_for = saved  # type: ignore[assignment]
            for driver in self.drivers:
                driver.close()
