"""SIGKILL the worker pool while calls of each tool kind are in flight.

For each kind (``http.request``, ``email.send``, ``notify.chat``, ``browser.screenshot``,
``media.image``) a small batch of executions of a one-tool-step workflow runs through a
real pool (``shiftflow workers``) on real RabbitMQ and PostgreSQL. The outside service
(``tool_targets``: a loopback web server, aiosmtpd) records each call on arrival and
answers slowly, so the pool (master, workers, their Chromium) is SIGKILLed while calls
are being answered; for ``media.image`` (no outside service) the kill waits for a RUNNING
tool execution. The pool is restarted and left to finish. One kill per kind keeps the
five kinds within about three minutes; the ``long`` variant kills three times.

What the engine does after such a kill (``models.engine.call_once``), and what is asserted:

* ``effect: repeatable`` (http.request, browser.screenshot, media.image): the redelivered
  step calls again (at least once) and every execution SUCCEEDS once; the killed call's
  tool execution is closed as abandoned.
* ``effect: once`` (email.send, notify.chat): a call killed mid-way leaves its effect
  SENDING; the redelivery marks it UNKNOWN and parks the step WAITING for an operator,
  listed by ``shiftflow effects list --state UNKNOWN``; it is never sent again by itself.
  The test then plays the operator: an effect the service did receive is settled
  ``--done``, one it never saw ``--retry``; after that every execution SUCCEEDS and the
  service saw each execution's effect exactly once.

The reliability checker judges every run (completed once, nothing lost, duplicated or
called after completion). Each kind adds its row to the scenario table.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support.waiting import wait_until
from tests.tool_servers import self_signed

from .checker import check
from .fault_checker import Numbers, operator_unknowns
from .processes import SHIFTFLOW
from .rig import Rig
from .scenarios import RESULTS
from .tool_targets import SlowSmtp, SlowWeb
from .waiting import statuses, wait_terminal

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

#: Executions per kind and kills of the pool: small, so five kinds stay within about
#: three minutes; ``test_many_sigkills_during_tool_calls`` (marked ``long``) does more.
BATCH, KILLS = 6, 1
#: Seconds the outside service takes to answer (the window a kill lands in).
DELAY = 1.0
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
WORKSPACE = "rel"


@dataclass(frozen=True)
class Kind:
    """One tool kind: its step, the queue its pool consumes, and the settled result of a
    call an operator confirms happened."""

    tool: str
    queue: str
    effect: str
    connection: str | None = None
    done_result: dict[str, Any] | None = None


KINDS = {
    "http": Kind("http.request", "tools", "repeatable"),
    "email": Kind("email.send", "tools.email", "once", "smtp-main",
                  {"message_id": "<settled@operator>", "accepted": ["ann@example.com"], "size": 0}),
    "chat": Kind("notify.chat", "tools", "once", "team-chat", {"status": 200, "format": "slack"}),
    "screenshot": Kind("browser.screenshot", "tools.browser", "repeatable"),
    "image": Kind("media.image", "tools.media", "repeatable"),
}


def _params(kind: str, base_url: str) -> dict[str, Any]:
    """The tool step's ``with``: every call names its execution (``run-<id>``)."""
    run = "run-{{ execution.id }}"
    return {
        "http": {"url": base_url + "/effect", "method": "POST", "json": {"text": run}},
        "email": {"to": "ann@example.com", "subject": run, "text": "Your order."},
        "chat": {"text": run},
        "screenshot": {"url": base_url + "/page?" + run, "width": 320, "height": 240},
        # A big picture, so the conversion takes long enough for a kill to land in it.
        "image": {"input": "{{ trigger.image }}", "operation": "resize", "width": 1300, "height": 1300,
                  "format": "webp", "quality": 90, "name": "{{ execution.id }}.webp"},
    }[kind]


def _definition(kind: str, base_url: str) -> dict[str, Any]:
    spec = KINDS[kind]
    step: dict[str, Any] = {"id": "call", "type": "tool", "tool": spec.tool, "with": _params(kind, base_url)}
    if spec.connection:
        step["connection"] = spec.connection
    return {
        "name": f"tool-kill-{kind}",
        "trigger": {"type": "manual"},
        "steps": [step, {"id": "after", "type": "transform", "with": {"output": "done"}}],
    }


def _source_image(artifact_dir: Path) -> dict[str, Any]:
    """A 2200x2200 picture in the pool's artifact store (seconds to convert on a busy
    machine); its reference."""
    import io

    from PIL import Image

    from shiftflow.kernel.artifacts.local import LocalArtifactStore

    gradient = Image.linear_gradient("L").resize((2200, 2200))
    noise = Image.effect_noise((2200, 2200), 60)
    picture = Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.ROTATE_90)))
    out = io.BytesIO()
    picture.save(out, "PNG", compress_level=1)
    store = LocalArtifactStore(artifact_dir, max_bytes=200_000_000)
    return store.put(out.getvalue(), "source.png", "image/png").to_dict()


def _store_connections(env: dict[str, str], pg_url: str, connections: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Store the workspace's connections (encrypted with the pool's keys)."""
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.engine.connection_secrets import store_connection
    from shiftflow.models.manage import catalog

    configure(Settings.from_env(env))
    db = bind_database(pg_url)
    try:
        with db.connection_context():
            workspace = catalog.ensure_workspace(WORKSPACE)
            for integration, name, credentials in connections:
                store_connection(workspace.id, integration, name, credentials)
    finally:
        close_all = getattr(db, "close_all", None)
        if close_all is not None:
            close_all()
        db.close()


def _seed_source_artifact(pg_url: str, workflow_id: str, ref: dict[str, Any]) -> str:
    """Make the source picture an artifact of the workspace (a tool reads only those), on a
    finished execution of its own; return that execution's id, deleted (with its artifact
    row) before the checker runs, so that it counts only the batch."""
    from shiftflow.kernel.db import bind_database
    from shiftflow.models.tables.artifacts import Artifact
    from shiftflow.models.tables.base import utcnow
    from shiftflow.models.tables.executions import Execution
    from shiftflow.models.tables.workflows import Workflow

    db = bind_database(pg_url)
    try:
        with db.connection_context():
            workflow = Workflow.get_by_id(workflow_id)
            now = utcnow()
            seed = Execution.create(workflow=workflow.id, workflow_version=1, workspace=workflow.workspace_id,
                                    dedup_key=f"seed-{uuid.uuid4().hex}", status="SUCCEEDED", trigger_data={},
                                    started_at=now, completed_at=now)
            Artifact.create(workspace=workflow.workspace_id, execution=seed.id, type="IMAGE", name=ref["name"],
                            url=ref["location"], size_bytes=ref["size"], mime_type=ref["mime"],
                            sha256=ref["sha256"])
            return str(seed.id)
    finally:
        close_all = getattr(db, "close_all", None)
        if close_all is not None:
            close_all()
        db.close()


def _query(pg_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def _running_calls(pg_url: str, tool: str) -> int:
    return int(_query(pg_url, "SELECT count(*) FROM tool_execution t JOIN tool ON tool.id = t.tool_id "
                              "WHERE tool.name = %s AND t.status = 'RUNNING'", tool)[0][0])


def _parked(pg_url: str) -> set[str]:
    """Executions whose step waits for an operator on an unknown outcome."""
    return {str(r[0]) for r in _query(pg_url, "SELECT execution_id FROM step_execution "
                                              "WHERE status = 'WAITING' AND wait_key LIKE 'effect:%%'")}


def _unknown_effects(pg_url: str) -> list[tuple[str, str, str]]:
    """(effect id, execution id, step id) of every effect whose outcome is unknown."""
    return [(str(i), str(e), s) for i, e, s in
            _query(pg_url, "SELECT id, execution_id, step_id FROM side_effect WHERE state = 'UNKNOWN'")]


def _abandoned(pg_url: str) -> int:
    """Tool executions a later attempt closed because their worker died mid-call."""
    return int(_query(pg_url, "SELECT count(*) FROM tool_execution WHERE error LIKE 'abandoned:%%'")[0][0])


def _settle(env: dict[str, str], effect_id: str, *how: str) -> None:
    result = subprocess.run([SHIFTFLOW, "effects", "settle", effect_id, *how, "--by", "reliability-test"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _wait_settled(pg_url: str, keys: list[str], stall: float = 60.0) -> None:
    """Wait until every execution is terminal or parked for an operator (no progress for
    ``stall`` seconds fails)."""

    def settled() -> bool:
        found = statuses(pg_url, keys)
        parked = _parked(pg_url)
        ids = {str(r[0]): r[1] for r in _query(pg_url, "SELECT id, status FROM execution")}
        open_ = [i for i, s in ids.items() if s not in TERMINAL and i not in parked]
        return len(found) == len(keys) and not open_

    wait_until(settled, timeout=stall * 2, interval=0.25, message="every execution finished or parked")


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Rig(real_env, pg_url, tmp_path / "logs") as made:
        yield made


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", list(KINDS))
def test_sigkill_during_tool_calls(kind: str, rig: Rig, tmp_path: Path) -> None:
    run_kind(kind, rig, tmp_path, BATCH, KILLS)


@pytest.mark.long
@pytest.mark.timeout(420)
@pytest.mark.parametrize("kind", list(KINDS))
def test_many_sigkills_during_tool_calls(kind: str, rig: Rig, tmp_path: Path) -> None:
    """More executions, three kills while calls are in flight (``make reliability``)."""
    run_kind(kind, rig, tmp_path, 16, 3)


def run_kind(kind: str, rig: Rig, tmp_path: Path, batch: int, kills: int) -> None:
    """Run ``batch`` executions of ``kind``'s workflow, SIGKILL the pool ``kills`` times while
    its calls are in flight, settle what waits for an operator, and check (module docstring)."""
    spec = KINDS[kind]
    started = time.monotonic()
    artifacts = tmp_path / "artifacts"
    env = {
        **rig.env,
        "SHIFTFLOW_ARTIFACT_DIR": str(artifacts),
        "SHIFTFLOW_ARTIFACT_MAX_BYTES": "200000000",
        # A holder killed with its process is taken over within seconds, not half a minute.
        "SHIFTFLOW_CLAIM_LEASE_SECONDS": "3",
        # A step in flight at a kill is not a poison message (test_quarantine covers that).
        "SHIFTFLOW_DELIVERY_LIMIT": "10",
    }
    closers: list[Callable[[], None]] = []
    try:
        web = SlowWeb(DELAY)
        closers.append(web.close)
        arrivals, in_flight = web.arrivals, lambda: web.arrivals.in_flight
        data: dict[str, Any] = {}
        if kind == "email":
            smtp = SlowSmtp(self_signed(str(tmp_path)), DELAY)
            closers.append(smtp.close)
            arrivals = smtp.arrivals
            in_flight = lambda: smtp.arrivals.in_flight  # noqa: E731
            _store_connections(env, rig.pg_url, [("smtp", "smtp-main", smtp.credentials())])
        elif kind == "chat":
            _store_connections(env, rig.pg_url, [("slack", "team-chat",
                                                  {"webhook_url": web.url + "/hook", "format": "slack"})])
        elif kind == "image":
            data["image"] = _source_image(artifacts)
            in_flight = lambda: _running_calls(rig.pg_url, spec.tool)  # noqa: E731
        workflow = rig.workflow(_definition(kind, web.url))
        seed = _seed_source_artifact(rig.pg_url, workflow, data["image"]) if kind == "image" else None

        pool = rig.pool(env, queues=("triggers", "steps", spec.queue), processes=1, threads=3)
        pool.start()
        pool.wait_ready(60)
        for n in range(batch):
            assert rig.publisher.trigger(workflow, f"{kind}-{n:02d}", {"n": n, **data})
        keys = list(rig.publisher.accepted)

        # Kill while calls of this kind are being answered.
        in_flight_at_kill: list[int] = []
        for _ in range(kills):
            wait_until(lambda: in_flight() > 0, timeout=90, interval=0.02,
                       message=f"a {spec.tool} call in flight")
            time.sleep(random.uniform(0.05, 0.3))
            in_flight_at_kill.append(in_flight())
            pool.kill()
            pool.start()
            pool.wait_ready(60)
        fault_end = time.monotonic()  # the drain is counted from the last restart

        _wait_settled(rig.pg_url, keys)
        seen_before = arrivals.per_execution()
        unknown = _unknown_effects(rig.pg_url)
        listed, how_listed = operator_unknowns(env)
        parked = _parked(rig.pg_url)
        done = retried = 0
        for effect_id, execution_id, _step in unknown:
            # The operator looks at the far side: received means done, never received means send it.
            if seen_before[execution_id]:
                _settle(env, effect_id, "--done", "--result", json.dumps(spec.done_result))
                done += 1
            else:
                _settle(env, effect_id, "--retry")
                retried += 1
        wait_terminal(rig.pg_url, keys, pool, stall=60)
        drained = time.monotonic() - fault_end
        if seed is not None:
            _query(rig.pg_url, "DELETE FROM execution WHERE id = %s RETURNING id", seed)

        calls = arrivals.per_execution()
        report = check(rig.pg_url, keys, arrivals.outside_calls("call"))
        abandoned = _abandoned(rig.pg_url)
        ids = {str(r[0]) for r in _query(rig.pg_url, "SELECT id FROM execution")}
        repeated = sum(1 for n in calls.values() if n > 1)
        numbers = Numbers(
            f"kill_{kind}" + ("" if kills == KILLS else f"_x{kills}"), deliveries=batch, accepted=len(keys),
            lost=report.counts["lost"], duplicated=report.counts["duplicated"],
            # Only a once effect may not repeat; a repeatable call's retries are allowed.
            repeated=repeated if spec.effect == "once" else 0,
            false_failures=sum(n for s, n in report.statuses.items() if s != "SUCCEEDED"),
            unknown_left=len(unknown), unknown_listed=len({(e, s) for _, e, s in unknown} & listed),
            parked=len(parked), succeeded=report.statuses.get("SUCCEEDED", 0), calls=sum(calls.values()),
            drain_seconds=drained, seconds=time.monotonic() - started,
        )
        numbers.notes += [
            f"{spec.tool} (effect {spec.effect}): kills={pool.kills} in flight at each kill={in_flight_at_kill} "
            f"abandoned tool executions={abandoned} boot_seconds={pool.boot_seconds}",
            f"outside calls={sum(calls.values())} for {len(calls)} executions, max per execution="
            f"{max(calls.values(), default=0)}, before the operator={sum(seen_before.values())}; "
            f"checker at-least-once repeats={report.at_least_once_calls} late={len(report.late_calls)}",
            f"parked for an operator={len(parked)} unknown effects={len(unknown)} (listed by {how_listed}: "
            f"{numbers.unknown_listed}); settled done={done} retry={retried}",
        ]
        RESULTS.append(numbers)
        print("\n" + numbers.report() + "\n" + report.summary())

        assert report.counts == {"completed_once": batch, "lost": 0, "duplicated": 0, "unexpected": 0}, \
            report.problems()
        assert report.statuses == {"SUCCEEDED": batch}, report.problems()
        assert report.late_calls == [] and report.stray_calls == []
        assert pool.kills == kills and all(in_flight_at_kill), in_flight_at_kill
        # The kills hit calls of this kind: a later attempt found their tool execution RUNNING.
        assert abandoned >= 1, abandoned
        if kind != "image":
            assert set(calls) == ids, "every execution's call reached the service"
        if spec.effect == "once":
            # Never repeated blindly: before the operator at most one call per execution, and
            # every call in flight at a kill became an unknown outcome parked for a person.
            assert max(seen_before.values(), default=0) <= 1, seen_before
            assert unknown and len(parked) == len(unknown), (unknown, parked)
            assert numbers.unknown_listed == len(unknown), (listed, how_listed)
            # After the operator: each execution's effect happened exactly once.
            assert set(calls.values()) == {1}, calls
        else:
            assert unknown == [] and not parked
            assert report.at_least_once_calls == sum(calls.values()) - len(calls)
        assert numbers.passed, numbers.report()
    finally:
        for close in reversed(closers):
            close()
