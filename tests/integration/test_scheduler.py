"""The scheduler and the poller on real PostgreSQL and RabbitMQ.

Published triggers are counted by reading the ``triggers`` queue of the test's own vhost
with pika; executions are created from them with ``start.start_execution`` where the
test needs to show that a re-published slot makes one execution.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import peewee
import pika
import pytest

from shiftflow.cli.main import main as cli
from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload, decode
from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.errors import BrokerUnavailable
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.polling_cursors import PollingCursor
from shiftflow.models.tables.schedules import Schedule
from shiftflow.producers.poller.loop import Poller
from shiftflow.producers.scheduler.config import add_schedule, build_config, sync_definition_schedules
from shiftflow.producers.scheduler.loop import Scheduler, dedup_key
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
UTC = dt.UTC
STEPS = [{"id": "noop", "type": "transform", "with": {"output": {"ok": True}}}]


@pytest.fixture
def env(pg_url, amqp_url):
    settings = configure(
        Settings.from_env(
            {
                "SHIFTFLOW_AMQP_URL": amqp_url,
                "SHIFTFLOW_DATABASE_URL": pg_url,
                "SHIFTFLOW_MONGO_URL": "mongodb://unused",
                "SHIFTFLOW_METRICS_PORT": "0",
                "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
            }
        )
    )
    db = bind_database(pg_url)
    broker = install(build_broker(settings, worker=False))
    broker.declare_queue("triggers", ensure=True)
    workspace = catalog.ensure_workspace("sched")
    flow = catalog.apply_definition(
        workspace, {"name": "ticker", "trigger": {"type": "manual"}, "steps": STEPS}
    )
    yield {
        "settings": settings,
        "broker": broker,
        "amqp_url": amqp_url,
        "workflow": flow.workflow,
        "workspace": workspace,
    }
    broker.close()
    db.close()


def publisher(env) -> ConfirmedBatchPublisher:
    return ConfirmedBatchPublisher(env["amqp_url"], env["broker"], timeout=10)


def drain(amqp_url: str) -> list[TriggerPayload]:
    """Every message now on the triggers queue, removed from it, as payloads."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        out = []
        while True:
            method, _props, body = channel.basic_get("triggers", auto_ack=True)
            if method is None:
                return out
            out.append(decode(TriggerPayload, json.loads(body)["kwargs"]["payload"]))
    finally:
        connection.close()


def schedules(env, count: int, **options: Any) -> list[Schedule]:
    now = dt.datetime.now(UTC)
    config = build_config(**options)
    return [add_schedule(env["workflow"], config, key=f"s{i}", now=now) for i in range(count)]


class FakeClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


# --------------------------------------------------------------------------- exactly once


def test_two_scheduler_loops_fire_every_slot_exactly_once(env):
    created = dt.datetime.now(UTC)
    rows = schedules(env, 300, every="1")
    counts = collections.Counter()

    class Counting(ConfirmedBatchPublisher):
        def __init__(self, name):
            super().__init__(env["amqp_url"], env["broker"])
            self.name = name

        def publish_all(self, messages, while_waiting=None):
            super().publish_all(messages, while_waiting)
            counts[self.name] += len(messages)

    stop = threading.Event()
    loops = [Scheduler(Counting(name), batch_size=100) for name in ("a", "b")]
    threads = [
        threading.Thread(target=loop.run, args=(stop,), kwargs={"tick_seconds": 0.05}) for loop in loops
    ]
    started = dt.datetime.now(UTC)
    for thread in threads:
        thread.start()

    def fired_three_each():  # committed rows: what both loops published and recorded
        return Schedule.select(peewee.fn.MIN(Schedule.fire_count)).scalar() >= 3

    wait_until(fired_three_each, timeout=30, interval=0.2, message="three slots of every schedule")
    stop.set()
    for thread in threads:
        thread.join(10)
    ended = dt.datetime.now(UTC)
    published = drain(env["amqp_url"])
    keys = collections.Counter(p.dedup_key for p in published)
    assert keys and max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]
    assert counts["a"] > 0 and counts["b"] > 0, counts  # both replicas took part
    by_schedule = collections.defaultdict(list)
    for p in published:
        by_schedule[p.data["schedule_id"]].append(dt.datetime.fromisoformat(p.data["scheduled_for"]))
    assert set(by_schedule) == {str(r.id) for r in rows}
    for slots in by_schedule.values():
        slots.sort()
        # No gap: consecutive seconds from the first slot to the last.
        assert [(b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False)] == [1.0] * (
            len(slots) - 1
        )
        assert created <= slots[0] <= started + dt.timedelta(seconds=2) and slots[-1] <= ended
        assert len(slots) >= 3
    # The rows agree with what was published.
    assert sum(r.fire_count for r in Schedule.select()) == len(published)


def test_a_failed_commit_after_publish_re_publishes_the_same_keys_and_makes_one_execution(env):
    [row] = schedules(env, 1, every="60")
    due = Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC)
    clock = FakeClock(due + dt.timedelta(seconds=1))

    class CommitFails(ConfirmedBatchPublisher):
        def publish_all(self, messages, while_waiting=None):
            super().publish_all(messages, while_waiting)
            raise peewee.OperationalError("connection lost at commit")  # as if COMMIT failed

    with pytest.raises(peewee.OperationalError):
        Scheduler(CommitFails(env["amqp_url"], env["broker"]), clock=clock).tick()
    assert Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC) == due  # rolled back: still due
    clock.now += dt.timedelta(seconds=2)
    Scheduler(publisher(env), clock=clock).tick()
    published = drain(env["amqp_url"])
    assert [p.dedup_key for p in published] == [dedup_key(row.id, due)] * 2
    for payload in published:
        start_execution(payload)
    assert Execution.select().where(Execution.source == "schedule").count() == 1
    assert Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC) == due + dt.timedelta(seconds=60)


def test_an_unconfirmed_publish_leaves_the_row_due(env):
    [row] = schedules(env, 1, every="60")
    due = Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC)

    class Down:
        def publish_all(self, messages, while_waiting=None):
            raise BrokerUnavailable("no confirm")

        def keepalive(self):
            pass

    with pytest.raises(BrokerUnavailable):
        Scheduler(Down(), clock=FakeClock(due + dt.timedelta(seconds=1))).tick()
    assert Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC) == due
    assert Schedule.get_by_id(row.id).fire_count == 0


def test_a_paused_workflow_lets_its_slots_pass(env):
    [row] = schedules(env, 1, every="60")
    due = Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC)
    env["workflow"].status = "PAUSED"
    env["workflow"].save()
    Scheduler(publisher(env), clock=FakeClock(due)).tick()
    assert drain(env["amqp_url"]) == []
    assert Schedule.get_by_id(row.id).next_fire_at.replace(tzinfo=UTC) == due + dt.timedelta(seconds=60)


# --------------------------------------------------------------------------- catch-up


@pytest.mark.parametrize(
    ("catch_up", "expected_minutes", "missed"),
    [
        ("skip", [10], None),  # slots 10:01..10:09 are missed; 10:10 is on time
        ("once", [10], 9),  # one fire for the whole period
        ("3", [7, 8, 9, 10], None),  # the 3 most recent missed, then the on-time one
    ],
)
def test_catch_up_after_downtime(env, catch_up, expected_minutes, missed):
    start = dt.datetime(2030, 5, 1, 10, 0, 30, tzinfo=UTC)
    [row] = [add_schedule(env["workflow"], build_config(cron="* * * * *", catch_up=catch_up), now=start)]
    Scheduler(publisher(env), clock=FakeClock(dt.datetime(2030, 5, 1, 10, 10, 30, tzinfo=UTC))).tick()
    published = drain(env["amqp_url"])
    assert [dt.datetime.fromisoformat(p.data["scheduled_for"]).minute for p in published] == expected_minutes
    assert published[0].data.get("missed") == missed
    assert Schedule.get_by_id(row.id).next_fire_at == dt.datetime(2030, 5, 1, 10, 11)


# --------------------------------------------------------------------------- overlap


def _run_execution(env, key: str, status: str) -> Execution:
    now = dt.datetime.now(UTC).replace(tzinfo=None)
    return Execution.create(
        workflow=env["workflow"].id,
        workflow_version=1,
        workspace=env["workspace"].id,
        dedup_key=key,
        source="schedule",
        status=status,
        started_at=now,
        completed_at=now if status == "SUCCEEDED" else None,
    )


def test_overlap_skip_waits_for_the_running_execution(env):
    start = dt.datetime(2030, 5, 1, 10, 0, 30, tzinfo=UTC)
    row = add_schedule(env["workflow"], build_config(cron="* * * * *", overlap="skip"), now=start)
    clock = FakeClock(dt.datetime(2030, 5, 1, 10, 1, 0, tzinfo=UTC))
    scheduler = Scheduler(publisher(env), clock=clock)
    scheduler.tick()
    [first] = drain(env["amqp_url"])
    # Its trigger is still queued (no execution yet): the next slot is skipped.
    clock.now = dt.datetime(2030, 5, 1, 10, 2, 0, tzinfo=UTC)
    scheduler.tick()
    assert drain(env["amqp_url"]) == []
    # Now it runs: still skipped.
    running = _run_execution(env, first.dedup_key, "RUNNING")
    clock.now = dt.datetime(2030, 5, 1, 10, 3, 0, tzinfo=UTC)
    scheduler.tick()
    assert drain(env["amqp_url"]) == []
    # Finished: the next slot fires again.
    Execution.update(status="SUCCEEDED", completed_at=running.started_at).where(
        Execution.id == running.id
    ).execute()
    clock.now = dt.datetime(2030, 5, 1, 10, 4, 0, tzinfo=UTC)
    scheduler.tick()
    assert [p.data["scheduled_for"] for p in drain(env["amqp_url"])] == ["2030-05-01T10:04:00Z"]
    assert Schedule.get_by_id(row.id).next_fire_at == dt.datetime(2030, 5, 1, 10, 5)


def test_overlap_buffer_one_fires_the_held_slot_when_the_run_ends(env):
    start = dt.datetime(2030, 5, 1, 10, 0, 30, tzinfo=UTC)
    row = add_schedule(env["workflow"], build_config(cron="* * * * *", overlap="buffer-one"), now=start)
    clock = FakeClock(dt.datetime(2030, 5, 1, 10, 1, 0, tzinfo=UTC))
    scheduler = Scheduler(publisher(env), clock=clock)
    scheduler.tick()
    [first] = drain(env["amqp_url"])
    running = _run_execution(env, first.dedup_key, "RUNNING")
    for minute in (2, 3, 4):  # three slots while it runs: the first is held, two are dropped
        clock.now = dt.datetime(2030, 5, 1, 10, minute, 0, tzinfo=UTC)
        scheduler.tick()
    assert drain(env["amqp_url"]) == []
    assert Schedule.get_by_id(row.id).pending_fire_at == dt.datetime(2030, 5, 1, 10, 2)
    Execution.update(status="SUCCEEDED", completed_at=running.started_at).where(
        Execution.id == running.id
    ).execute()
    clock.now = dt.datetime(2030, 5, 1, 10, 4, 20, tzinfo=UTC)  # between slots: only the held one is due
    scheduler.tick()
    assert [p.data["scheduled_for"] for p in drain(env["amqp_url"])] == ["2030-05-01T10:02:00Z"]
    assert Schedule.get_by_id(row.id).pending_fire_at is None


def test_overlap_allow_fires_while_running(env):
    start = dt.datetime(2030, 5, 1, 10, 0, 30, tzinfo=UTC)
    add_schedule(env["workflow"], build_config(cron="* * * * *"), now=start)
    clock = FakeClock(dt.datetime(2030, 5, 1, 10, 1, 0, tzinfo=UTC))
    scheduler = Scheduler(publisher(env), clock=clock)
    scheduler.tick()
    [first] = drain(env["amqp_url"])
    _run_execution(env, first.dedup_key, "RUNNING")
    clock.now = dt.datetime(2030, 5, 1, 10, 2, 0, tzinfo=UTC)
    scheduler.tick()
    assert len(drain(env["amqp_url"])) == 1


# --------------------------------------------------------------------------- definitions and CLI


def test_definition_schedules_are_synced(env):
    flow = catalog.apply_definition(
        env["workspace"],
        {
            "name": "nightly",
            "trigger": {
                "type": "schedule",
                "cron": "0 3 * * *",
                "timezone": "Europe/Berlin",
                "catch_up": "skip",
                "overlap": "skip",
            },
            "steps": STEPS,
        },
    )
    now = dt.datetime(2030, 1, 10, 12, tzinfo=UTC)
    assert sync_definition_schedules(now) == 1
    row = Schedule.get(workflow=flow.workflow.id, key="definition")
    assert (row.catch_up, row.overlap, row.next_fire_at) == ("NONE", "SKIP", dt.datetime(2030, 1, 11, 2))
    assert sync_definition_schedules(now) == 0  # unchanged: left alone
    catalog.apply_definition(
        env["workspace"], {"name": "nightly", "trigger": {"type": "schedule", "every": "1h"}, "steps": STEPS}
    )
    assert sync_definition_schedules(now) == 1
    assert Schedule.get_by_id(row.id).kind == "INTERVAL"
    catalog.apply_definition(
        env["workspace"], {"name": "nightly", "trigger": {"type": "manual"}, "steps": STEPS}
    )
    sync_definition_schedules(now)
    assert not Schedule.get_by_id(row.id).is_active


def test_cli_add_list_pause_resume_remove(env, pg_url, amqp_url, monkeypatch, capsys):
    monkeypatch.setenv("SHIFTFLOW_DATABASE_URL", pg_url)
    monkeypatch.setenv("SHIFTFLOW_AMQP_URL", amqp_url)
    monkeypatch.setenv("SHIFTFLOW_MONGO_URL", "mongodb://unused")
    assert (
        cli(
            [
                "schedules",
                "add",
                "--workflow",
                "ticker",
                "--workspace",
                "sched",
                "--cron",
                "*/5 9-17 * * MON-FRI",
                "--timezone",
                "America/New_York",
                "--catch-up",
                "3",
                "--overlap",
                "buffer-one",
                "--json",
            ]
        )
        == 0
    )
    added = json.loads(capsys.readouterr().out)
    assert (added["catch_up"], added["max_catch_up"], added["overlap"]) == ("ALL", 3, "BUFFER_ONE")
    assert cli(["schedules", "list", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [added["id"]]
    assert cli(["schedules", "pause", added["id"]]) == 0
    assert not Schedule.get_by_id(added["id"]).is_active
    assert cli(["schedules", "resume", added["id"]]) == 0
    assert Schedule.get_by_id(added["id"]).is_active
    capsys.readouterr()
    # Bad input: exit 2 and a message naming the flag.
    assert (
        cli(
            [
                "schedules",
                "add",
                "--workflow",
                "ticker",
                "--workspace",
                "sched",
                "--key",
                "x",
                "--cron",
                "61 * * * *",
            ]
        )
        == 2
    )
    assert "--cron: minute: 61 is out of range 0-59" in capsys.readouterr().err
    assert (
        cli(
            [
                "schedules",
                "add",
                "--workflow",
                "ticker",
                "--workspace",
                "sched",
                "--every",
                "5m",
                "--timezone",
                "Mars/Base",
            ]
        )
        == 2
    )
    assert "--timezone: 'Mars/Base' is not a known IANA time zone" in capsys.readouterr().err
    assert cli(["schedules", "add", "--workflow", "ticker", "--workspace", "sched", "--every", "5m"]) == 2
    assert "--key: workflow 'ticker' already has a schedule named 'default'" in capsys.readouterr().err
    assert cli(["schedules", "add", "--workflow", "nope", "--workspace", "sched", "--every", "5m"]) == 2
    assert "--workflow: no workflow 'nope'" in capsys.readouterr().err
    assert cli(["schedules", "remove", str(uuid.uuid4())]) == 2
    assert cli(["schedules", "remove", added["id"]]) == 0
    assert Schedule.select().count() == 0


# --------------------------------------------------------------------------- polling


class _Source(BaseHTTPRequestHandler):
    items: list[dict] = []
    requests: list[str] = []
    fail = False

    def do_GET(self):
        type(self).requests.append(self.path)
        if type(self).fail:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        out = json.dumps({"data": {"orders": type(self).items}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def source():
    _Source.items, _Source.requests, _Source.fail = [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/orders"
    server.shutdown()
    server.server_close()


def test_polling_triggers_once_per_new_item_across_two_pollers(env, source):
    flow = catalog.apply_definition(
        env["workspace"],
        {
            "name": "orders",
            "steps": STEPS,
            "trigger": {
                "type": "polling",
                "every": "1",
                "request": {"url": source},
                "items": "$.data.orders",
                "id": "id",
                "cursor": {"param": "since", "field": "id"},
            },
        },
    )
    _Source.items = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}]
    pollers = [Poller(publisher(env), allow_private=True, http_timeout=5) for _ in range(2)]
    pollers[0].sync()
    pollers[1].sync()  # idempotent
    assert PollingCursor.select().count() == 1
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), kwargs={"tick_seconds": 0.05}) for p in pollers]
    for thread in threads:
        thread.start()
    try:
        published = []
        wait_until(lambda: published.extend(drain(env["amqp_url"])) or len(published) >= 3, timeout=10)
        _Source.items = [{"id": 2, "v": "b"}, {"id": 3, "v": "c"}, {"id": 4, "v": "d"}, {"id": 5, "v": "e"}]
        wait_until(lambda: published.extend(drain(env["amqp_url"])) or len(published) >= 5, timeout=10)
        # More polls, and nothing new may appear. Polls of one cursor never overlap (each
        # claims it until it has published and committed), so once the source has seen
        # two requests after this point, at least one whole poll of the same items is over.
        polled = len(_Source.requests)
        wait_until(lambda: len(_Source.requests) >= polled + 2, timeout=10, message="two more polls")
        published.extend(drain(env["amqp_url"]))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert [p.dedup_key for p in published] == [f"poll:default:{i}" for i in (1, 2, 3, 4, 5)]
    assert [p.data["item"]["v"] for p in published] == ["a", "b", "c", "d", "e"]
    assert all(p.source == "polling" and p.workflow_id == str(flow.workflow.id) for p in published)
    assert any("since=5" in path for path in _Source.requests)  # the cursor went back to the source
    cursor = PollingCursor.get()
    assert cursor.cursor == 5 and cursor.seen_keys[-2:] == ["4", "5"]


def test_polling_failure_backs_off_and_keeps_the_cursor(env, source):
    catalog.apply_definition(
        env["workspace"],
        {
            "name": "orders",
            "steps": STEPS,
            "trigger": {"type": "polling", "every": "30", "request": {"url": source}, "items": "data.orders"},
        },
    )
    now = dt.datetime(2030, 1, 1, tzinfo=UTC)
    poller = Poller(publisher(env), allow_private=True, http_timeout=5, clock=FakeClock(now))
    poller.sync()
    _Source.fail = True
    assert poller.tick() == 0
    cursor = PollingCursor.get()
    assert cursor.consecutive_failures == 1 and "answered 500" in cursor.last_error
    assert cursor.next_poll_at == dt.datetime(2030, 1, 1, 0, 0, 30)
    _Source.fail, _Source.items = False, [{"id": "x"}]
    poller.clock = FakeClock(now + dt.timedelta(seconds=31))
    assert poller.tick() == 1
    assert PollingCursor.get().consecutive_failures == 0
    assert [p.dedup_key for p in drain(env["amqp_url"])] == ["poll:default:x"]
    # Items without an id are an error of the source, not skipped silently.
    _Source.items = [{"name": "no id"}]
    poller.clock = FakeClock(now + dt.timedelta(seconds=62))
    assert poller.tick() == 0
    assert "has no id at 'id'" in PollingCursor.get().last_error
    database.close()
