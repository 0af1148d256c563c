"""Where ShiftFlow's time goes per execution (``bench_engine.py --profile``).

Three views of the same workflow:

1. py-spy on the real worker pool during a burst (sampling, on-CPU threads only): the
   share of worker CPU per library of the innermost frame, and the ShiftFlow functions
   with the largest inclusive share.
2. A sequential trace in this process: the registered actor functions run one message at
   a time against the same PostgreSQL database and Mongo sink, with a stub broker in place
   of RabbitMQ. It counts per execution SQL statements (by verb), transactions, messages
   and Mongo documents, and times SQL against the rest; cProfile names the Python costs.
   Per hop (message, by actor): statements, SQL and wall time; the statements of one whole
   execution in order; rows inserted and updated per table (``pg_stat_user_tables`` of
   the system's database, HOT updates apart) with each table's index count; Mongo
   documents by collection and by message; live-update publishes.
3. The cost of one confirmed publish to RabbitMQ, which the trace leaves out.
"""

from __future__ import annotations

import collections
import contextlib
import cProfile
import io
import pstats
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.engine_services import BIN, Workers
from bench.engine_systems import ShiftFlowSystem


def _library(frame: str) -> str:
    """The library (``peewee``, ``pika``, ``shiftflow.models``...) of a py-spy frame ``func (path:line)``."""
    path = frame.rsplit("(", 1)[-1].rstrip(")").rsplit(":", 1)[0].split("site-packages/")[-1]
    if "shiftflow/" in path:
        parts = ("shiftflow/" + path.split("shiftflow/", 1)[1]).split("/")
        return ".".join(parts[:2]).removesuffix(".py")
    return path.lstrip("/").split("/", 1)[0].removesuffix(".py") or "?"


def summarise_pyspy(raw: Path, top: int = 18) -> None:
    """Print py-spy's collapsed stacks as shares per library (self) and per ShiftFlow function
    (inclusive)."""
    by_lib: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        by_lib[_library(frames[-1])] += count
        leaf[frames[-1].rsplit(":", 1)[0] + ")"] += count
        seen = set()
        for frame in frames:
            if "shiftflow/" in frame:
                name = (
                    frame.split(" (", 1)[0] + " (" + frame.rsplit("shiftflow/", 1)[1].rsplit(":", 1)[0] + ")"
                )
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
    if not total:
        print("py-spy recorded no samples")
        return
    print(f"\npy-spy: {total} on-CPU samples of the worker pool")
    print("  self time by library of the innermost frame:")
    for name, count in by_lib.most_common(top):
        print(f"    {count / total:6.1%}  {name}")
    print("  self time by innermost function (time in C code, e.g. psycopg2 waiting, counts for its caller):")
    for name, count in leaf.most_common(12):
        print(f"    {count / total:6.1%}  {name}")
    print("  inclusive time of ShiftFlow functions:")
    for name, count in inclusive.most_common(top):
        print(f"    {count / total:6.1%}  {name}")


def _sample_waits(sf: ShiftFlowSystem, stop: threading.Event, into: collections.Counter[str]) -> None:
    """Sample what the system's PostgreSQL backends are doing every 10 ms until ``stop``."""
    import psycopg2

    conn = psycopg2.connect(sf.pg_url, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute(
                    "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
                for state, wait in cur.fetchall():
                    into[f"{state} / {wait}" if state == "active" else str(state)] += 1
                stop.wait(0.01)
    finally:
        conn.close()


def _pyspy_phase(sf: ShiftFlowSystem, workers: Workers, count: int, out: Path) -> None:
    exe = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(exe).exists():
        print("py-spy is not installed (pip install py-spy): skipping the sampling profile")
        return
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(workers.pids()[0]),
            "--subprocesses",
            "--nonblocking",
            "--gil",  # only threads holding the GIL: Python CPU, not threads waiting on sockets
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    waits: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_waits, args=(sf, stop, waits), daemon=True)
    try:
        # The timer loop's fork boots seconds after the workers on a loaded box: its imports
        # are not the cost of a step, so sampling starts once it is ready.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            log = workers.log_tail(0, 1_000_000)  # the log of every start: count the boots
            if log.count("timer_fork' is ready") >= log.count("is booting up"):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let py-spy attach to every process
        sampler.start()
        sf.begin_phase()
        for i in range(count):
            sf.trigger("prof", i)
        deadline = time.monotonic() + 120
        while sf.finished("prof") < count and time.monotonic() < deadline:
            workers.check_alive()
            time.sleep(0.1)
    finally:
        stop.set()
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    sampler.join(5)
    total = sum(waits.values())
    if total:
        print(f"\nPostgreSQL backends of the worker pool during the burst ({total} samples, 10 ms apart):")
        for name, n in waits.most_common(10):
            print(f"    {n / total:6.1%}  {name}")
    if out.exists():
        summarise_pyspy(out)
    else:
        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")


class _Counting:
    """A DB-API cursor wrapper counting statements by verb and the time spent in them."""

    def __init__(self, cursor: Any, stats: dict[str, Any]) -> None:
        self._cursor, self._stats = cursor, stats

    def execute(self, sql: str, params: Any = None) -> Any:
        verb = sql.lstrip().split(None, 1)[0].upper()
        start = time.perf_counter()
        try:
            return self._cursor.execute(sql, params)
        finally:
            spent = time.perf_counter() - start
            self._stats["sql_seconds"] += spent
            self._stats["verbs"][verb] += 1
            shape = " ".join(sql.split())[:90]
            self._stats["shapes"][shape] += spent
            self._stats["shape_counts"][shape] += 1
            actor = self._stats.get("actor", "?")
            self._stats["hop_statements"][actor] += 1
            self._stats["hop_sql"][actor] += spent
            if self._stats.get("record") is not None:
                self._stats["record"].append((actor, f"{spent * 1000:5.2f} ms  " + " ".join(sql.split())[:150]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Any:
        return iter(self._cursor)


def _fresh_stats() -> dict[str, Any]:
    return {
        "sql_seconds": 0.0,
        "verbs": collections.Counter(),
        "messages": 0,
        "docs": 0,
        "shapes": collections.Counter(),
        "shape_counts": collections.Counter(),
        "hop_statements": collections.Counter(),
        "hop_sql": collections.Counter(),
        "hop_wall": collections.Counter(),
        "hop_cpu": collections.Counter(),
        "hop_count": collections.Counter(),
        "doc_kinds": collections.Counter(),
        "live": 0,
        "live_updates": 0,
        "record": None,
    }


def trace(sf: ShiftFlowSystem, count: int = 100) -> None:
    """Run ``count`` executions one message at a time in this process; print the per-execution
    counts and costs, and cProfile's largest Python costs."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.middleware import CurrentMessage

    from bench.engine_services import counter_delta, pg_counters, pg_indexes
    from shiftflow import actors
    from shiftflow.kernel import redis_handle
    from shiftflow.kernel.contracts import TriggerPayload
    from shiftflow.kernel.db import bind_database, database
    from shiftflow.kernel.enqueue import build_message
    from shiftflow.kernel.mongo import MongoSink, configure_sink
    from shiftflow.kernel.settings import configure

    configure(sf.settings)
    # Live updates go to Redis as in the workers, so the PUBLISH commands sent are counted.
    redis_handle.configure_redis(sf.settings.redis_url)
    db = bind_database(sf.pg_url)
    stub = StubBroker(middleware=[CurrentMessage()])
    declared = actors.declare(stub)
    dramatiq.set_broker(stub)
    sink = MongoSink(sf.settings.mongo_url, sf.mongo_db)
    configure_sink(sink)
    stats = _fresh_stats()
    real_cursor, real_write = db.cursor, sink.write
    real_publish = redis_handle.publish_updates

    def publish(updates: Any) -> None:
        stats["live"] += 1
        stats["live_updates"] += len(updates)
        real_publish(updates)

    # Wherever it was imported by name (the models' layout may move: found, not named).
    patched: list[Any] = [m for name, m in list(sys.modules.items())
               if name.startswith("shiftflow") and getattr(m, "publish_updates", None) is real_publish]
    for module in patched:
        module.publish_updates = publish
    db.cursor = lambda *a, **k: _Counting(real_cursor(*a, **k), stats)  # type: ignore[method-assign]

    def write(collection: str, document: dict[str, Any]) -> None:
        stats["docs"] += 1
        text = str(document.get("message") or document.get("event") or document.get("type") or "")
        kind = " ".join(w if not any(c.isdigit() for c in w) else "#" for w in text.split()[:6])
        stats["doc_kinds"][f"{collection}: {kind}"] += 1
        if stats.get("record") is not None:
            stats["record"].append((stats.get("actor", "?"), f"mongo {collection}: {text[:100]}"))
        real_write(collection, document)

    sink.write = write  # type: ignore[method-assign]
    current = CurrentMessage()
    profiler = cProfile.Profile()
    wall = 0.0
    timed: tuple[float, dict[str, Any], int] = (0.0, stats, 1)
    pg_before: dict[str, int] = {}
    pg_done: dict[str, float] = {}
    one: list[tuple[str, str]] = []
    published_before, published = 0, 0.0
    try:
        for i in range(count + 5):
            if i == 5:  # the first executions warm caches and the pool: not counted
                redis_handle.flush_updates(5)
                published_before = redis_handle.messages_published()
                stats.update(_fresh_stats())
                wall = 0.0
                db.close_all()  # type: ignore[attr-defined]  # its counters land (a backend reports on exit)
                time.sleep(0.3)
                pg_before = pg_counters(sf.pg_url)
            stats["record"] = one if i == 6 else None
            if i == count // 2 + 5:
                # Timings come from the first half (cProfile slows every Python call); the
                # profile from the second half, so it names costs without distorting them.
                db.close_all()  # type: ignore[attr-defined]
                time.sleep(0.3)
                pg_done = counter_delta(pg_before, pg_counters(sf.pg_url), i - 5)
                pg_done["xact_commit"] = pg_done.get("xact_commit", 0) - 3 / max(1, i - 5)
                timed = (
                    wall,
                    {k: v.copy() if isinstance(v, collections.Counter) else v for k, v in stats.items()},
                    i - 5,
                )
                profiler.enable()
            start = time.perf_counter()
            payload = TriggerPayload(
                workflow_id=sf.workflow_id,
                dedup_key=f"trace-{i}",
                source="bench",
                data={"n": i},
                received_at=time.time(),
            )
            stub.enqueue(build_message("triggers.start", payload))
            busy = True
            while busy:
                busy = False
                for queue in list(stub.queues.values()):
                    while not queue.empty():
                        message = dramatiq.Message.decode(queue.get_nowait())
                        stats["messages"] += 1
                        busy = True
                        hop = message.actor_name
                        if hop == "tools.call" or hop == "steps.run":
                            hop += " " + str(message.kwargs.get("payload", {}).get("step_id", "?"))
                        stats["actor"] = hop
                        if stats["record"] is not None:
                            stats["record"].append((hop, "-- message received"))
                        hop_start, hop_cpu = time.perf_counter(), time.thread_time()
                        database.connect(reuse_if_open=True)
                        current.before_process_message(stub, message)
                        try:
                            declared[message.actor_name].fn(*message.args, **message.kwargs)
                        finally:
                            current.after_process_message(stub, message)
                            database.close()
                        stats["hop_wall"][hop] += time.perf_counter() - hop_start
                        # This thread's CPU: Python and the client libraries, not the waits
                        # on PostgreSQL, Mongo or the echo service (the live-update and Mongo
                        # sender threads run apart and are not in it).
                        stats["hop_cpu"][hop] += time.thread_time() - hop_cpu
                        stats["hop_count"][hop] += 1
            wall += time.perf_counter() - start
        redis_handle.flush_updates(5)
        published = (redis_handle.messages_published() - published_before) / count
    finally:
        profiler.disable()
        redis_handle.configure_redis("")
        for module in patched:
            module.publish_updates = real_publish
        sink.close()
        configure_sink(None)
        db.cursor = real_cursor  # type: ignore[method-assign]
        with contextlib.suppress(Exception):
            db.close_all()  # type: ignore[attr-defined]
    wall, stats, n = timed
    profiled = count + 5 - (count // 2 + 5)
    verbs = stats["verbs"]
    print(f"\ntrace: {n} executions one message at a time in one thread (stub broker, same PG and Mongo)")
    print(
        f"  per execution: {wall * 1000 / n:.2f} ms wall, of which SQL {stats['sql_seconds'] * 1000 / n:.2f} ms; "
        f"{sum(verbs.values()) / n:.1f} SQL statements ("
        + ", ".join(f"{v} {c / n:.1f}" for v, c in verbs.most_common())
        + f"); "
        f"{stats['messages'] / n:.1f} messages; {stats['docs'] / n:.1f} Mongo documents"
    )
    print("  per hop (message): count per execution, statements, SQL ms, wall ms and this thread's CPU ms per message:")
    for hop, hops in sorted(stats["hop_count"].items()):
        print(
            f"    {hop:<22} x{hops / n:4.1f}  {stats['hop_statements'][hop] / hops:5.1f} statements  "
            f"SQL {stats['hop_sql'][hop] * 1000 / hops:6.2f} ms  wall {stats['hop_wall'][hop] * 1000 / hops:6.2f} ms"
            f"  CPU {stats['hop_cpu'][hop] * 1000 / hops:5.2f} ms"
        )
    indexes = pg_indexes(sf.pg_url)
    if pg_done:
        print(
            f"  PostgreSQL per execution (pg_stat_database): {pg_done.get('xact_commit', 0):.1f} commits, "
            f"{pg_done.get('tup_inserted', 0):.1f} rows inserted, {pg_done.get('tup_updated', 0):.1f} updated, "
            f"{pg_done.get('tup_deleted', 0):.1f} deleted, {pg_done.get('blks_hit', 0):.0f} buffer hits"
        )
        print("  rows written per execution by table (index entries written = rows x indexes, HOT updates none):")
        for table in sorted({k.rsplit(".", 1)[0] for k in pg_done if "." in k}):
            ins, upd, hot = (pg_done.get(f"{table}.{x}", 0.0) for x in ("ins", "upd", "hot"))
            idx = indexes.get(table, 0)
            print(
                f"    {table:<22} +{ins:4.1f} inserted  {upd:4.1f} updated ({hot:4.1f} HOT)  {idx} indexes"
                f"  -> about {(ins + upd - hot) * idx:5.1f} index entries"
            )
    print(f"  live updates: {stats['live'] / n:.1f} transitions queued per execution ({stats['live_updates'] / n:.1f} "
          f"updates), {published:.1f} PUBLISH commands sent to Redis per execution (all {count})")
    print("  Mongo documents per execution by collection and message:")
    for kind, c in stats["doc_kinds"].most_common(14):
        print(f"    x{c / n:4.1f}  {kind}")
    print("  one whole execution, in order (statement time, statement):")
    for hop, line in one:
        print(f"    [{hop}] {line}")
    print("  SQL statements by time (ms per execution, count per execution):")
    for shape, spent in stats["shapes"].most_common(12):
        print(f"    {spent * 1000 / n:6.2f} ms  x{stats['shape_counts'][shape] / n:.1f}  {shape}")
    out = io.StringIO()
    ps = pstats.Stats(profiler, stream=out)
    ps.sort_stats("cumulative").print_stats(r"shiftflow/", 22)
    ps.sort_stats("tottime").print_stats(14)
    print(
        f"  cProfile of {profiled} more executions (ms per execution = time * 1000 / {profiled}); "
        "by cumulative time in shiftflow/, then by own time:"
    )
    for line in out.getvalue().splitlines():
        if line.strip() and (line.lstrip()[0].isdigit() or "ncalls" in line):
            print("   " + line)


def publish_cost(sf: ShiftFlowSystem, count: int = 300) -> None:
    """Time ``count`` confirmed publishes of a small message with ShiftFlow's producer broker."""
    import dramatiq

    broker = sf.broker
    broker.declare_queue("bench_probe")
    message = dramatiq.Message(
        queue_name="bench_probe",
        actor_name="bench.probe",
        args=(),
        kwargs={"payload": {"execution_id": "x" * 36, "step_id": "shape"}},
        options={},
    )
    broker.enqueue(message)
    start = time.perf_counter()
    for _ in range(count):
        broker.enqueue(message.copy())
    per = (time.perf_counter() - start) * 1000 / count
    print(f"\npublish: {per:.2f} ms per confirmed publish (one thread, {count} messages)")


def profile_shiftflow(sf: ShiftFlowSystem, running: Callable[[], Any], count: int, log_dir: Path) -> None:
    """All three views (see the module docstring)."""
    print("\n=== profile: ShiftFlow ===")
    with running() as workers:
        _pyspy_phase(sf, workers, count, log_dir / "pyspy.raw")
    trace(sf)
    publish_cost(sf)
