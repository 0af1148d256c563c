"""A small Jepsen-style checker: every accepted trigger is completed once, lost or duplicated.

The history it judges has three sources, none of them the engine's own opinion:

* the trigger keys the test *accepted* (the broker confirmed the publish);
* a status-transition log kept by PostgreSQL itself: ``install_recorder`` adds triggers
  on ``execution`` and ``step_execution`` that append every committed status change (and
  every claim of a step, i.e. every counted delivery) to a table ``reliability_history`` (a rolled-back transaction leaves no entry, so the log is
  exactly what was committed, in commit-independent ``clock_timestamp`` order);
* the outside service's own record of every call it received (``OutsideCall``).

``classify`` turns them into one ``Verdict`` per key:

``completed_once``
    exactly one execution, in a terminal status, no step recorded SUCCEEDED twice and
    no outside call made after its step was recorded SUCCEEDED.
``lost``
    accepted, but no execution, or one that never reached a terminal status.
``duplicated``
    more than one execution for the key, a step (or execution) whose transition into
    a terminal status was committed twice, or an outside call received after its step's
    ``completed_at`` ("a completed step run twice").
``unexpected``
    an execution for a key that was never accepted.

Outside calls received *before* their step completed, beyond the first, are the
documented at-least-once retries (a crash between the call and the commit): they are
counted in ``Report.at_least_once_calls`` and are not failures. Effects that must not
repeat go through the effects ledger (``effect: once``), which this checker does not
excuse.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Terminal statuses of executions and steps (kernel.steps.TERMINAL, restated so the
#: checker does not take the engine's word for what "finished" means).
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED", "TIMED_OUT"})

OUTCOMES = ("completed_once", "lost", "duplicated", "unexpected")

RECORDER_SQL = """
CREATE TABLE IF NOT EXISTS reliability_history (
    seq          bigserial PRIMARY KEY,
    tbl          text        NOT NULL,
    row_id       uuid        NOT NULL,
    execution_id uuid        NOT NULL,
    step_id      text,
    iteration    integer,
    old_status   text,
    new_status   text        NOT NULL,
    attempts     integer,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Steps: every status change, and every claim (a delivery counted: attempts changed).
CREATE OR REPLACE FUNCTION reliability_record_step() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before text := NULL;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.status IS NOT DISTINCT FROM OLD.status AND NEW.attempts IS NOT DISTINCT FROM OLD.attempts THEN
            RETURN NULL;
        END IF;
        before := OLD.status;
    END IF;
    INSERT INTO reliability_history (tbl, row_id, execution_id, step_id, iteration, old_status, new_status,
                                     attempts)
    VALUES ('step', NEW.id, NEW.execution_id, NEW.step_id, NEW.iteration, before, NEW.status, NEW.attempts);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION reliability_record_execution() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before text := NULL;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
            RETURN NULL;
        END IF;
        before := OLD.status;
    END IF;
    INSERT INTO reliability_history (tbl, row_id, execution_id, old_status, new_status)
    VALUES ('execution', NEW.id, NEW.id, before, NEW.status);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS reliability_steps ON step_execution;
CREATE TRIGGER reliability_steps AFTER INSERT OR UPDATE ON step_execution
    FOR EACH ROW EXECUTE FUNCTION reliability_record_step();
DROP TRIGGER IF EXISTS reliability_executions ON execution;
CREATE TRIGGER reliability_executions AFTER INSERT OR UPDATE ON execution
    FOR EACH ROW EXECUTE FUNCTION reliability_record_execution();
"""


@dataclass(frozen=True)
class ExecutionRow:
    """One ``execution`` row as the checker sees it."""

    id: str
    dedup_key: str
    status: str
    error: str | None = None


@dataclass(frozen=True)
class StepRow:
    """One ``step_execution`` row as the checker sees it (times naive UTC)."""

    id: str
    execution_id: str
    step_id: str
    iteration: int
    status: str
    attempts: int
    retry_count: int = 0
    completed_at: dt.datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class Transition:
    """One committed status change (``tbl`` is ``step`` or ``execution``)."""

    tbl: str
    row_id: str
    execution_id: str
    step_id: str | None
    iteration: int | None
    old_status: str | None
    new_status: str
    at: dt.datetime
    #: A step's delivery count after this change (a claim changes it without a status change).
    attempts: int | None = None


@dataclass(frozen=True)
class OutsideCall:
    """One call the outside service received (``at`` naive UTC, taken on receipt).

    ``iteration``: the ``for_each`` item the call was made for (1..n), 0 for a plain step;
    each item is judged against its own row's completion.
    """

    execution_id: str
    step_id: str
    at: dt.datetime
    iteration: int = 0


@dataclass
class History:
    """Everything the checker judges."""

    executions: list[ExecutionRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    calls: list[OutsideCall] = field(default_factory=list)


@dataclass
class Verdict:
    """The outcome of one trigger key, with the reasons behind it."""

    key: str
    outcome: str
    status: str | None = None
    execution_ids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The checker's result: one verdict per key plus statistics."""

    verdicts: dict[str, Verdict]
    #: Deliveries of step messages beyond the first: sum(attempts - 1) over claimed steps.
    redeliveries: int = 0
    #: Outside calls beyond the first made before their step completed (allowed retries).
    at_least_once_calls: int = 0
    #: Outside calls received after their step was recorded SUCCEEDED (violations).
    late_calls: list[OutsideCall] = field(default_factory=list)
    #: Outside calls naming an execution the database does not have.
    stray_calls: list[OutsideCall] = field(default_factory=list)
    #: The highest delivery count of any step (how close a step came to quarantine).
    max_attempts: int = 0

    def keys(self, outcome: str) -> list[str]:
        """The keys with ``outcome``, sorted."""
        return sorted(k for k, v in self.verdicts.items() if v.outcome == outcome)

    @property
    def counts(self) -> dict[str, int]:
        """How many keys got each outcome (every outcome present, zeros included)."""
        found = Counter(v.outcome for v in self.verdicts.values())
        return {outcome: found.get(outcome, 0) for outcome in OUTCOMES}

    @property
    def statuses(self) -> dict[str, int]:
        """Final execution statuses of the keys completed once."""
        return dict(Counter(v.status or "?" for v in self.verdicts.values() if v.outcome == "completed_once"))

    def problems(self, limit: int = 10) -> list[str]:
        """Human-readable reasons of the first ``limit`` keys not completed once."""
        bad = [v for v in self.verdicts.values() if v.outcome != "completed_once"]
        return [f"{v.key}: {v.outcome} ({'; '.join(v.reasons) or v.status})" for v in bad[:limit]]

    def summary(self) -> str:
        """One line of statistics for the test log."""
        return (
            f"checker: {self.counts} statuses={self.statuses} redeliveries={self.redeliveries} "
            f"max_attempts={self.max_attempts} at_least_once_calls={self.at_least_once_calls} "
            f"late_calls={len(self.late_calls)} stray_calls={len(self.stray_calls)}"
        )


def classify(accepted: Iterable[str], history: History) -> Report:
    """Judge every accepted key (and every execution for a key never accepted).

    Parameters:
        accepted: the dedup keys whose publish the broker confirmed.
        history: executions, steps, committed transitions and outside calls.

    Returns:
        A ``Report`` with one ``Verdict`` per key.
    """
    accepted = set(accepted)
    by_key: dict[str, list[ExecutionRow]] = defaultdict(list)
    for row in history.executions:
        by_key[row.dedup_key].append(row)
    steps_by_execution: dict[str, list[StepRow]] = defaultdict(list)
    for step in history.steps:
        steps_by_execution[step.execution_id].append(step)

    doubled = _doubled_transitions(history.transitions)
    late, stray, extra_calls = _judge_calls(history)
    late_by_execution: dict[str, list[OutsideCall]] = defaultdict(list)
    for call in late:
        late_by_execution[call.execution_id].append(call)

    verdicts: dict[str, Verdict] = {}
    for key in sorted(accepted | set(by_key)):
        rows = by_key.get(key, [])
        verdict = Verdict(key, "completed_once", execution_ids=[r.id for r in rows])
        verdicts[key] = verdict
        if key not in accepted:
            verdict.outcome = "unexpected"
            verdict.reasons.append(f"{len(rows)} execution(s) for a key never accepted")
            continue
        if not rows:
            verdict.outcome = "lost"
            verdict.reasons.append("no execution")
            continue
        if len(rows) > 1:
            verdict.outcome = "duplicated"
            verdict.reasons.append(f"{len(rows)} executions")
        row = rows[0]
        verdict.status = row.status
        for execution in rows:
            for what in doubled.get(execution.id, []):
                verdict.outcome = "duplicated"
                verdict.reasons.append(what)
            for call in late_by_execution.get(execution.id, []):
                verdict.outcome = "duplicated"
                verdict.reasons.append(
                    f"outside call for step {call.step_id} at {call.at.isoformat()} "
                    "after the step was recorded SUCCEEDED"
                )
        if verdict.outcome == "completed_once" and row.status not in TERMINAL:
            verdict.outcome = "lost"
            verdict.reasons.append(f"never finished (status {row.status})")

    claimed = [s for s in history.steps if s.attempts > 0]
    return Report(
        verdicts,
        redeliveries=sum(s.attempts - 1 for s in claimed),
        at_least_once_calls=extra_calls,
        late_calls=late,
        stray_calls=stray,
        max_attempts=max((s.attempts for s in claimed), default=0),
    )


def _doubled_transitions(transitions: list[Transition]) -> dict[str, list[str]]:
    """Rows that entered a terminal status more than once, by execution id."""
    entered: Counter[tuple[str, str, str]] = Counter()
    labels: dict[tuple[str, str, str], tuple[str, str]] = {}
    for t in transitions:
        if t.new_status in TERMINAL and t.old_status != t.new_status:
            key = (t.tbl, t.row_id, t.new_status)
            entered[key] += 1
            label = "execution" if t.tbl == "execution" else f"step {t.step_id}#{t.iteration}"
            labels[key] = (t.execution_id, label)
    out: dict[str, list[str]] = defaultdict(list)
    for key, count in entered.items():
        if count > 1:
            execution_id, label = labels[key]
            out[execution_id].append(f"{label} entered {key[2]} {count} times")
    return out


def _judge_calls(history: History) -> tuple[list[OutsideCall], list[OutsideCall], int]:
    """Split outside calls into late ones (after completion), stray ones (unknown execution),
    and count the allowed at-least-once extras."""
    steps = {(s.execution_id, s.step_id, s.iteration): s for s in history.steps}
    known = {e.id for e in history.executions}
    late: list[OutsideCall] = []
    stray: list[OutsideCall] = []
    in_time: Counter[tuple[str, str, int]] = Counter()
    for call in history.calls:
        step = steps.get((call.execution_id, call.step_id, call.iteration))
        if call.execution_id not in known or step is None:
            stray.append(call)
        elif step.status == "SUCCEEDED" and step.completed_at is not None and call.at > step.completed_at:
            late.append(call)
        else:
            in_time[(call.execution_id, call.step_id, call.iteration)] += 1
    return late, stray, sum(n - 1 for n in in_time.values() if n > 1)


# --------------------------------------------------------------------------- PostgreSQL


def install_recorder(pg_url: str) -> None:
    """Add the status-transition log (table and triggers) to the database at ``pg_url``.

    Install it before any execution exists: the log is only as complete as its start.
    """
    import psycopg2

    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(RECORDER_SQL)
    finally:
        conn.close()


def _naive_utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def load_history(pg_url: str, calls: Iterable[OutsideCall] = ()) -> History:
    """Read executions, steps and the transition log from ``pg_url``; add ``calls``.

    Raises:
        psycopg2.Error: the database cannot be read (or ``install_recorder`` was not run).
    """
    import psycopg2

    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, dedup_key, status, error FROM execution")
            executions = [ExecutionRow(str(i), k, s, e) for i, k, s, e in cur.fetchall()]
            cur.execute(
                "SELECT id, execution_id, step_id, iteration, status, attempts, retry_count, "
                "completed_at, error FROM step_execution"
            )
            steps = [
                StepRow(str(r[0]), str(r[1]), r[2], r[3], r[4], r[5], r[6], _naive_utc(r[7]), r[8])
                for r in cur.fetchall()
            ]
            cur.execute(
                "SELECT tbl, row_id, execution_id, step_id, iteration, old_status, new_status, at, attempts "
                "FROM reliability_history ORDER BY seq"
            )
            transitions = [
                Transition(
                    r[0],
                    str(r[1]),
                    str(r[2]),
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    _naive_utc(r[7]) or dt.datetime.min,
                    r[8],
                )
                for r in cur.fetchall()
            ]
    finally:
        conn.close()
    return History(executions, steps, transitions, list(calls))


def check(pg_url: str, accepted: Iterable[str], calls: Iterable[OutsideCall] = ()) -> Report:
    """Load the history from ``pg_url`` and classify ``accepted`` (see ``classify``)."""
    return classify(accepted, load_history(pg_url, calls))
