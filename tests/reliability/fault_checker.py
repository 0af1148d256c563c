"""The fault scenarios' checker: the sender's ledger, PostgreSQL and the counting server, joined.

Three records that do not depend on each other are compared:

* the sender's ``Ledger``: every answer the ingress gave (a 202 is a promise);
* PostgreSQL, read directly: executions (by dedup key ``standard:<delivery id>``),
  step rows, the ``side_effect`` ledger, ``dead_letter`` rows, and the status
  transitions recorded by ``checker.install_recorder``'s triggers;
* the ``CountingServer``: every call the workflows made, per (execution, step).

``check`` turns them into ``Numbers``, one row of the table the suite prints:

``202s``
    deliveries answered 202 at least once.
``lost``
    a 202 with no execution and no dead letter an operator can see (``dead_letter``
    naming the delivery's dedup key).
``dup``
    executions beyond the first for one delivery, plus steps or executions whose
    transition into a terminal status was committed twice.
``repeated``
    calls beyond the first for one (execution, step): the steps are ``effect: once``.
``false fail``
    executions that ended FAILED, TIMED_OUT or CANCELLED though the counting server
    never fails a call. The one excuse is an outcome ShiftFlow could not know: the
    step's effect is left SENDING or UNKNOWN *and* a ShiftFlow process died between the
    step's call and the effect's last update (the process holding the answer was
    killed). An outcome marked unknown while every process lived (a store was down, a
    message came twice) is a false failure.
``unknown``
    ``side_effect`` rows left SENDING or UNKNOWN once the scenario drained, and how
    many of them an operator's listing shows (``operator_unknowns``).
``drain``
    seconds from the fault's end until every 202 had a finished execution (or a dead
    letter) and no effect was SENDING.

``Numbers.passed`` is the pass bar: 0 lost, 0 duplicated, 0 repeated, 0 false
failures, every unknown outcome listed, drained within ``DRAIN_LIMIT`` seconds, every
delivery answered (no 5xx but 503, none abandoned) and nothing left unfinished.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checker import TERMINAL
from .counting import Call
from .processes import SHIFTFLOW
from .sender import Ledger

#: Seconds after a fault's end by which every accepted delivery must be finished.
DRAIN_LIMIT = 120.0
#: Execution statuses that end it without success.
UNSUCCESSFUL = frozenset({"FAILED", "TIMED_OUT", "CANCELLED"})
#: ``side_effect`` states whose outcome nobody recorded.
OPEN_EFFECTS = frozenset({"SENDING", "UNKNOWN"})


def dedup_key(delivery_id: str) -> str:
    """The dedup key the ingress gives a Standard Webhooks delivery."""
    return f"standard:{delivery_id}"


@dataclass
class Numbers:
    """One scenario's row of the table, with examples behind each non-zero number."""

    scenario: str
    deliveries: int = 0
    accepted: int = 0
    refused: int = 0
    answers_503: int = 0
    server_errors: int = 0
    gave_up: int = 0
    lost: int = 0
    dead_lettered: int = 0
    duplicated: int = 0
    repeated: int = 0
    false_failures: int = 0
    unknown_left: int = 0
    unknown_listed: int = 0
    #: Executions that wait for an operator on an unknown outcome (not finished, not lost).
    parked: int = 0
    unfinished: int = 0
    succeeded: int = 0
    calls: int = 0
    drain_seconds: float | None = None
    seconds: float = 0.0
    #: Further facts worth a line (pool restarts, log bytes, logs caught up...).
    notes: list[str] = field(default_factory=list)
    #: Scenario-specific failures (e.g. logs neither written nor counted as dropped).
    extra_problems: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def example(self, what: str, text: str, limit: int = 5) -> None:
        """Keep ``text`` as an example of ``what`` (at most ``limit`` each)."""
        found = self.examples.setdefault(what, [])
        if len(found) < limit:
            found.append(text)

    @property
    def drained(self) -> bool:
        """True when the scenario drained within ``DRAIN_LIMIT``."""
        return self.drain_seconds is not None and self.drain_seconds <= DRAIN_LIMIT

    def problems(self) -> list[str]:
        """Every way the row misses the pass bar (empty: passed)."""
        out = []
        for count, what in (
            (self.lost, "lost"),
            (self.duplicated, "duplicated"),
            (self.repeated, "repeated calls"),
            (self.false_failures, "false failures"),
            (self.unknown_left - self.unknown_listed, "unknown outcomes no operator listing shows"),
            (self.unfinished, "202s whose execution never finished"),
            (self.server_errors, "answers other than 2xx, 4xx and 503"),
            (self.gave_up, "deliveries never accepted before the sender gave up"),
        ):
            if count:
                out.append(f"{count} {what}")
        if not self.drained:
            out.append(f"not drained within {DRAIN_LIMIT:g} s of the fault's end")
        return out + self.extra_problems

    @property
    def passed(self) -> bool:
        """True when the row meets the pass bar."""
        return not self.problems()

    def report(self) -> str:
        """The row, its notes, its problems and examples, for a failing assertion or the log."""
        lines = [format_table([self]), *(f"  note: {n}" for n in self.notes)]
        lines += [f"  FAIL: {p}" for p in self.problems()]
        for what, found in self.examples.items():
            lines += [f"  e.g. {what}: {text}" for text in found]
        return "\n".join(lines)


COLUMNS = (
    ("scenario", 18), ("sent", 5), ("202s", 5), ("4xx", 4), ("503", 5), ("lost", 4), ("dup", 4),
    ("repeated", 8), ("false fail", 10), ("unknown (listed)", 16), ("drain s", 7), ("took s", 6), ("pass", 4),
)


def format_table(rows: list[Numbers]) -> str:
    """A fixed-width table of ``rows`` with a header line."""

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, (_, w)) in enumerate(zip(values, COLUMNS, strict=True)))

    out = [line([name for name, _ in COLUMNS])]
    for r in rows:
        drain = "-" if r.drain_seconds is None else f"{r.drain_seconds:.1f}"
        out.append(line([
            r.scenario, str(r.deliveries), str(r.accepted), str(r.refused), str(r.answers_503), str(r.lost),
            str(r.duplicated), str(r.repeated), str(r.false_failures), f"{r.unknown_left} ({r.unknown_listed})",
            drain if r.drained else f">{DRAIN_LIMIT:g}" if r.drain_seconds is None else drain + "!",
            f"{r.seconds:.0f}", "yes" if r.passed else "NO",
        ]))
    return "\n".join(out)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Snapshot:
    """What PostgreSQL holds about a scenario's executions."""

    executions: list[tuple[str, str, str, str | None]]  # id, dedup_key, status, error
    steps: list[tuple[str, str, str, str | None]]  # execution_id, step_id, status, error
    #: execution_id, step_id, state, sent_at and updated_at (epoch seconds; sent_at None if never sent)
    effects: list[tuple[str, str, str, float | None, float]]
    dead_letters: list[str]  # payload and error, as text
    doubled: list[str]  # rows that entered a terminal status twice
    #: Steps claimed more than once (a redelivery or a second copy), and the most claims of one.
    reclaimed: int = 0
    max_attempts: int = 0
    #: Executions parked for an operator: an effect of theirs has an UNKNOWN outcome.
    parked: frozenset[str] = frozenset()


def read_snapshot(pg_url: str) -> Snapshot:
    """Read executions, steps, effects, dead letters and doubled transitions."""
    import psycopg2

    conn = psycopg2.connect(pg_url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id::text, dedup_key, status, error FROM execution")
            executions = cur.fetchall()
            cur.execute("SELECT execution_id::text, step_id, status, error FROM step_execution")
            steps = cur.fetchall()
            # updated_at is naive UTC (models.tables.base.utcnow).
            cur.execute(
                "SELECT execution_id::text, step_id, state, "
                "extract(epoch FROM sent_at AT TIME ZONE 'UTC')::float8, "
                "extract(epoch FROM updated_at AT TIME ZONE 'UTC')::float8 FROM side_effect"
            )
            effects = cur.fetchall()
            cur.execute("SELECT payload::text || ' ' || coalesce(error, '') FROM dead_letter")
            dead_letters = [r[0] for r in cur.fetchall()]
            cur.execute(
                "SELECT tbl, execution_id::text, coalesce(step_id, ''), new_status, count(*) "
                "FROM reliability_history WHERE new_status = ANY(%s) AND old_status IS DISTINCT FROM new_status "
                "GROUP BY tbl, row_id, execution_id, step_id, new_status HAVING count(*) > 1",
                (sorted(TERMINAL),),
            )
            doubled = [f"{t} {e} {s} entered {st} {n} times" for t, e, s, st, n in cur.fetchall()]
            cur.execute("SELECT count(*) FILTER (WHERE attempts > 1), coalesce(max(attempts), 0) FROM step_execution")
            reclaimed, max_attempts = cur.fetchone()
    finally:
        conn.close()
    parked = frozenset(eid for eid, _, state, _, _ in effects if state == "UNKNOWN")
    return Snapshot(executions, steps, effects, dead_letters, doubled, reclaimed, max_attempts, parked)


def unsettled(pg_url: str, delivery_ids: set[str]) -> int:
    """How many of ``delivery_ids`` have neither a finished execution nor a dead letter,
    plus effects still SENDING: 0 once the scenario drained.

    Raises:
        psycopg2.Error: PostgreSQL is unreachable (during its outage).
    """
    import psycopg2

    keys = [dedup_key(d) for d in delivery_ids]
    conn = psycopg2.connect(pg_url, connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM unnest(%s::text[]) AS k(key) WHERE NOT EXISTS ("
                "  SELECT 1 FROM execution e WHERE e.dedup_key = k.key AND (e.status = ANY(%s)"
                # Parked for an operator on an unknown outcome: settled, until a person decides.
                "   OR EXISTS (SELECT 1 FROM side_effect x WHERE x.execution_id = e.id AND x.state = 'UNKNOWN')))"
                " AND NOT EXISTS (SELECT 1 FROM dead_letter d WHERE strpos(d.payload::text, k.key) > 0)",
                (keys, sorted(TERMINAL)),
            )
            waiting = int(cur.fetchone()[0])
            cur.execute("SELECT count(*) FROM side_effect WHERE state = 'SENDING'")
            return waiting + int(cur.fetchone()[0])
    finally:
        conn.close()


# --------------------------------------------------------------------------- operator


def operator_unknowns(env: dict[str, str]) -> tuple[set[tuple[str, str]], str]:
    """The (execution id, step id) pairs an operator sees as unknown outcomes, and how they
    were read.

    Reads ``shiftflow effects list --json`` (a list of objects, or ``{"items": [...]}``,
    naming ``execution_id`` or ``execution`` and ``step_id`` or ``step``). While that
    command does not exist nothing is listed, and the second value
    says why.
    """
    result = subprocess.run(
        [SHIFTFLOW, "effects", "list", "--state", "UNKNOWN", "--limit", "200", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        return set(), f"`shiftflow effects list --json` exit {result.returncode}: {tail[0][:160]}"
    try:
        data: Any = json.loads(result.stdout)
    except ValueError:
        return set(), "`shiftflow effects list --json` did not print JSON"
    items = data.get("items", []) if isinstance(data, dict) else data
    listed = {
        (str(i.get("execution_id", i.get("execution"))), str(i.get("step_id", i.get("step"))))
        for i in items
        if isinstance(i, dict)
    }
    return listed, "`shiftflow effects list --json`"


# --------------------------------------------------------------------------- the join


def check(
    scenario: str,
    ledger: Ledger,
    snapshot: Snapshot,
    calls: list[Call],
    listed: set[tuple[str, str]],
    deaths: Sequence[float] = (),
) -> Numbers:
    """Join the ledger, the database and the calls into one scenario's ``Numbers``.

    ``deaths`` are the times (epoch seconds) ShiftFlow processes were killed or exited
    on their own: the only excuse for an outcome left unknown.
    """
    n = Numbers(scenario)
    statuses = ledger.statuses()
    accepted = ledger.accepted()
    n.deliveries = len(ledger.deliveries)
    n.accepted = len(accepted)
    n.refused = len(ledger.refused())
    n.answers_503 = statuses.get(503, 0)
    n.server_errors = sum(c for s, c in statuses.items() if s >= 500 and s != 503)
    n.gave_up = len(ledger.gave_up - accepted)
    for a in ledger.snapshot():
        if a.status >= 500 and a.status != 503:
            n.example("server error", f"{a.delivery_id} ({ledger.deliveries[a.delivery_id].label}): "
                                      f"{a.status} {a.reason}")

    by_key: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for eid, key, status, error in snapshot.executions:
        by_key[key].append((eid, status, error))
    for delivery_id in sorted(accepted):
        key = dedup_key(delivery_id)
        rows = by_key.get(key, [])
        label = ledger.deliveries[delivery_id].label
        if not rows:
            if any(key in text for text in snapshot.dead_letters):
                n.dead_lettered += 1
            else:
                n.lost += 1
                n.example("lost", f"{delivery_id} ({label}): 202, no execution, no dead letter")
            continue
        if len(rows) > 1:
            n.duplicated += len(rows) - 1
            n.example("duplicated", f"{delivery_id}: {len(rows)} executions")
        if not any(status in TERMINAL for _, status, _ in rows):
            if any(eid in snapshot.parked for eid, _, _ in rows):
                n.parked += 1  # waits for an operator on an unknown outcome: counted there
                continue
            n.unfinished += 1
            n.example("unfinished", f"{delivery_id} ({label}): execution {rows[0][0]} {rows[0][1]}")
    n.duplicated += len(snapshot.doubled)
    for text in snapshot.doubled:
        n.example("duplicated", text)

    per_step = Counter((c.execution_id, c.step_id) for c in calls)
    n.calls = len(calls)
    n.repeated = sum(count - 1 for count in per_step.values() if count > 1)
    for (eid, step), count in per_step.items():
        if count > 1:
            n.example("repeated", f"execution {eid} step {step}: {count} calls")

    effects: dict[str, dict[str, str]] = defaultdict(dict)
    open_effects: dict[tuple[str, str], bool] = {}  # -> excused by a death
    for eid, step, state, sent, updated in snapshot.effects:
        effects[eid][step] = state
        if state in OPEN_EFFECTS:
            # Excused: a process died between the intent's commit and the last update.
            since = updated if sent is None else sent
            open_effects[(eid, step)] = any(since - 1.0 <= death <= updated + 1.0 for death in deaths)
    n.unknown_left = len(open_effects)
    n.unknown_listed = len(open_effects.keys() & listed)

    executions = {eid: (status, error) for eid, _, status, error in snapshot.executions}
    for eid, step in sorted(open_effects.keys() - listed):
        status, error = executions.get(eid, ("?", None))
        n.example("unknown, not listed", f"execution {eid} {status} step {step}: {effects[eid][step]}, "
                                         f"{per_step.get((eid, step), 0)} call(s); {(error or '')[:100]}")

    step_errors: dict[str, list[str]] = defaultdict(list)
    for eid, step, status, error in snapshot.steps:
        if status in UNSUCCESSFUL:
            step_errors[eid].append(f"{step} {status}: {(error or '')[:120]}")
    accepted_keys = {dedup_key(d) for d in accepted}
    for eid, key, status, error in snapshot.executions:
        if key not in accepted_keys:
            continue
        if status == "SUCCEEDED":
            n.succeeded += 1
        elif status in UNSUCCESSFUL and not any(open_effects.get((eid, step)) for step in effects[eid]):
            n.false_failures += 1
            made = {step: per_step.get((eid, step), 0) for step in effects[eid]}
            n.example("false failure", f"execution {eid} {status} ({(error or '')[:100]}); effects "
                                       f"{effects[eid]}; calls {made}; steps {step_errors[eid][:2]}")
    return n
