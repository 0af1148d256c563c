"""Dead letters: the caller's view of them, and replay by filter.

Dead letters have no workspace column (``consumers.dead_letters`` stores whatever
Dramatiq gave up on); a workspace sees those of its executions (``execution_id``) and
the trigger messages of its workflows (the payload's ``workflow_id``). The CLI operator
sees all.

Replay re-enqueues the stored Dramatiq messages (``actor_name`` and ``kwargs``), oldest
first, each in its own transaction that locks the row (``SKIP LOCKED``: two operators
never replay one letter at once), publishes with confirms, then sets ``replayed_at``
with its audit entry. Replayed letters are skipped unless ``force``. A crash between
publish and commit replays that letter once more next time, which the actors'
idempotency absorbs; a replayed message gets a new message id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peewee

from shiftflow.kernel.contracts import ACTORS, Priority, decode
from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.errors import NotFound
from shiftflow.models.engine import runs
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.paging import Page, keyset, parse_limit, window
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.problems import InvalidInput
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.workflows import Workflow

DEFAULT_REPLAY_LIMIT, MAX_REPLAY_LIMIT = 100, 1000


def _id_text(field: Any) -> Any:
    # UUIDs are text with dashes in dead-letter payloads; PostgreSQL keeps uuid (cast),
    # SQLite 32 hex digits (compare without dashes).
    return peewee.Cast(field, "text") if is_postgres() else field


def _dashless(expr: Any) -> Any:
    return expr if is_postgres() else peewee.fn.REPLACE(expr, "-", "")


def _payload_workflow_id() -> Any:
    if is_postgres():
        return peewee.NodeList(
            (DeadLetter.payload, peewee.SQL("-> 'kwargs' -> 'payload' ->> 'workflow_id'")), parens=True
        )
    return peewee.fn.json_extract(DeadLetter.payload, peewee.SQL("'$.kwargs.payload.workflow_id'"))


def dead_letters_of(actor: Principal) -> Any:
    """A query of the dead letters the caller may see: those of the workspace's executions,
    and triggers of its workflows (all of them for the CLI operator)."""
    query = DeadLetter.select()
    if actor.workspace_id is None:
        return query
    executions = Execution.select(_id_text(Execution.id)).where(Execution.workspace == actor.workspace_id)
    workflows = Workflow.select(_id_text(Workflow.id)).where(Workflow.workspace == actor.workspace_id)
    return query.where(
        _dashless(DeadLetter.execution_id).in_(executions)
        | (DeadLetter.execution_id.is_null() & _dashless(_payload_workflow_id()).in_(workflows))
    )


def filter_dead_letters(
    query: Any,
    *,
    queue: Any = None,
    actor_name: Any = None,
    since: Any = None,
    until: Any = None,
    replayed: Any = None,
) -> Any:
    """Narrow a dead-letter query by queue, actor, ``created_at`` window and replay state."""
    if queue not in (None, ""):
        query = query.where(DeadLetter.queue == str(queue))
    if actor_name not in (None, ""):
        query = query.where(DeadLetter.actor == str(actor_name))
    query = window(query, DeadLetter.created_at, since, until)
    if replayed is not None:
        query = query.where(
            DeadLetter.replayed_at.is_null(False) if replayed else DeadLetter.replayed_at.is_null()
        )
    return query


def dead_letter_dict(row: DeadLetter, *, payload: bool = False) -> dict[str, Any]:
    """A dead letter as plain data (with its stored message only when ``payload``)."""
    out = {
        "id": str(row.id),
        "message_id": row.message_id,
        "queue": row.queue,
        "actor": row.actor,
        "execution_id": row.execution_id,
        "error": (row.error or "")[-2000:] or None,
        "created_at": stamp(row.created_at),
        "replayed_at": stamp(row.replayed_at),
    }
    if payload:
        out["payload"] = row.payload
    return out


def list_dead_letters(
    actor: Principal,
    *,
    queue: Any = None,
    actor_name: Any = None,
    since: Any = None,
    until: Any = None,
    replayed: Any = None,
    limit: Any = None,
    cursor: str | None = None,
) -> Page:
    """Dead letters the caller may see, newest first, filtered and paged."""
    actor.require("dead_letters:read")
    query = filter_dead_letters(
        dead_letters_of(actor),
        queue=queue,
        actor_name=actor_name,
        since=since,
        until=until,
        replayed=replayed,
    )
    rows, nxt = keyset(query, DeadLetter, parse_limit(limit), cursor)
    return Page([dead_letter_dict(r) for r in rows], nxt)


def get_dead_letter(actor: Principal, dead_letter_id: Any) -> DeadLetter:
    """One dead letter the caller may see.

    Raises:
        NotFound: no such dead letter, or not of the caller's workspace.
    """
    actor.require("dead_letters:read")
    did = parse_id(dead_letter_id, "dead letter")
    row = dead_letters_of(actor).where(DeadLetter.id == did).get_or_none()
    if row is None:
        raise NotFound(f"dead letter {did} does not exist")
    return row


@dataclass
class Replay:
    """The outcome of a dead-letter replay (or of a dry run)."""

    matched: int = 0
    replayed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API and CLI."""
        return {
            "matched": self.matched,
            "replayed": self.replayed,
            "skipped": self.skipped,
            "dry_run": self.dry_run,
        }


def _message_of(row: DeadLetter) -> tuple[str, Any, int]:
    """The actor, decoded payload and priority of a stored Dramatiq message.

    Raises:
        ValueError: not a message of a declared actor.
    """
    message = row.payload if isinstance(row.payload, dict) else {}
    if "unstorable" in message:
        # A stand-in (``dead_letters.stand_in``): the message itself could not be stored,
        # and sending it again would fail the same way.
        raise ValueError(f"the message could not be stored as JSON ({message['unstorable']}); "
                         "its text is in the dead letter's payload")
    name = message.get("actor_name") or row.actor
    spec = ACTORS.get(name)
    if spec is None:
        raise ValueError(f"actor {name!r} is not declared")
    kwargs = message.get("kwargs")
    inner = kwargs.get("payload") if isinstance(kwargs, dict) else None
    if not isinstance(inner, dict):
        raise ValueError("the stored message has no payload")
    try:
        payload: Any = decode(spec.payload, inner)
    except TypeError as exc:
        raise ValueError(f"the stored payload does not fit {name}: {exc}") from None
    options = message.get("options")
    if not isinstance(options, dict):
        options = {}
    priority = options.get("broker_priority", int(Priority.NORMAL))
    return name, payload, priority if isinstance(priority, int) else int(Priority.NORMAL)


def replay_dead_letters(
    actor: Principal,
    send: Callable[..., str],
    *,
    queue: Any = None,
    actor_name: Any = None,
    since: Any = None,
    until: Any = None,
    ids: Any = None,
    limit: Any = None,
    force: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> Replay:
    """Re-enqueue dead letters matching a filter, oldest first.

    Parameters:
        send: ``kernel.enqueue.send`` (publishes with confirms), or a stand-in.
        queue, actor_name, since, until: the filter (``created_at`` window).
        ids: replay exactly these dead letters (each must be visible to the caller).
        limit: the most letters to replay (default 100, at most 1000).
        force: replay letters that were replayed before, too.
        dry_run: report what would be replayed, publish nothing.
        progress: called after each letter with (done, total, outcome).

    Raises:
        NotFound: one of ``ids`` is not a dead letter of the caller's workspace.
        InvalidInput: a malformed filter.
        BrokerUnavailable: the broker refused a publish (letters replayed so far stay replayed).
    """
    actor.require("dead_letters:replay")
    count = DEFAULT_REPLAY_LIMIT if limit in (None, "") else limit
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPLAY_LIMIT:
        raise InvalidInput("limit", f"expected an integer between 1 and {MAX_REPLAY_LIMIT}")
    query = filter_dead_letters(
        dead_letters_of(actor),
        queue=queue,
        actor_name=actor_name,
        since=since,
        until=until,
        replayed=None if force else False,
    )
    if ids is not None:
        if not isinstance(ids, list) or not ids:
            raise InvalidInput("ids", "expected a non-empty list of dead-letter ids")
        wanted = [parse_id(i, "dead letter") for i in ids]
        visible = {r.id for r in dead_letters_of(actor).where(DeadLetter.id.in_(wanted))}
        missing = [w for w in wanted if w not in visible]
        if missing:
            raise NotFound(f"dead letter {missing[0]} does not exist")
        query = query.where(DeadLetter.id.in_(wanted))
    candidates = [
        r.id
        for r in query.select(DeadLetter.id, DeadLetter.created_at)
        .order_by(DeadLetter.created_at, DeadLetter.id)
        .limit(count)
    ]
    report = Replay(matched=len(candidates), dry_run=dry_run)
    for done, letter_id in enumerate(candidates, 1):
        outcome = _replay_one(actor, letter_id, send, force=force, dry_run=dry_run)
        (report.replayed if outcome["outcome"] in ("replayed", "would_replay") else report.skipped).append(
            outcome
        )
        if progress is not None:
            progress(done, len(candidates), outcome)
    return report


def _replay_one(
    actor: Principal, letter_id: Any, send: Callable[..., str], *, force: bool, dry_run: bool
) -> dict[str, Any]:
    with runs.transaction():
        query = DeadLetter.select().where(DeadLetter.id == letter_id)
        if not force:
            query = query.where(DeadLetter.replayed_at.is_null())
        if is_postgres():
            query = query.for_update(skip_locked=True)
        row = query.get_or_none()
        if row is None:
            return {
                "id": str(letter_id),
                "outcome": "skipped",
                "reason": "replayed or being replayed by another",
            }
        base = {"id": str(row.id), "actor": row.actor, "queue": row.queue}
        try:
            name, payload, priority = _message_of(row)
        except ValueError as exc:
            return {**base, "outcome": "skipped", "reason": str(exc)}
        if dry_run:
            return {**base, "outcome": "would_replay"}
        before = dead_letter_dict(row)
        message_id = send(name, payload, priority=priority)
        row.replayed_at = utcnow()
        row.save(only=[DeadLetter.replayed_at])
        audit.record(
            actor,
            "dead_letter.replayed",
            "dead_letter",
            row.id,
            before=before,
            after={**dead_letter_dict(row), "new_message_id": message_id},
            workspace_id=actor.workspace_id,
        )
        return {**base, "outcome": "replayed", "message_id": message_id}
