"""The management API's multi-phase paths: timelines (read and streamed), retry chains, and
pattern workspaces (create, read, send feedback, approve).

Their part of the OpenAPI document and their handlers, kept apart from ``api.spec`` and
``api.handlers``, which merge them in. The handlers call ``models.patterns.workspaces``.

The stream (``GET /executions/{id}/timeline/stream``) is Server-Sent Events: first the
stored events after ``after`` (MongoDB), then each new one as its execution's Redis channel
carries it, each once (``id:`` is the event's ``seq``, ``event:`` its type). It follows the
retry chain (a retry's child joins the stream), and ends with an ``end`` event when the last
execution of the chain has ended, or after ``wait`` seconds. Redis is not the truth: while
no message comes, it re-reads MongoDB every two seconds, so a lost live message only delays
an event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from shiftflow.kernel.db import database
from shiftflow.kernel.redis_handle import channel, get_redis
from shiftflow.kernel.steps import TERMINAL
from shiftflow.kernel.timeline_types import TYPES
from shiftflow.models.engine import retries, timeline
from shiftflow.models.manage import queries
from shiftflow.models.patterns import workspaces
from shiftflow.models.tables.executions import Execution
from shiftflow.producers.api.schemas import ID, NULL_ID, NULL_TEXT, NULL_TIME, closed, obj, ref

#: Longest a stream stays open (seconds); a client reconnects with ``after``.
MAX_WAIT = 300
#: Seconds without a live message after which MongoDB is read again.
REREAD_SECONDS = 2.0
#: Seconds between keep-alive comments.
KEEPALIVE_SECONDS = 15.0

_EXECUTION_STATUS = {"type": "string", "enum": ["PENDING", "RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "CANCELLED",
                                                "TIMED_OUT"]}
_CHAIN_ITEM = obj(["id", "status", "parent_id", "retry_count", "max_retries", "retry_reason", "phase", "progress",
                   "created_at"], id=ID, status=_EXECUTION_STATUS, parent_id=NULL_ID,
                  retry_count={"type": "integer", "minimum": 0}, max_retries={"type": "integer", "minimum": 0},
                  retry_reason=NULL_TEXT, phase=NULL_TEXT, progress={"type": "integer", "minimum": 0, "maximum": 100},
                  created_at=NULL_TIME)

SCHEMAS: dict[str, Any] = {
    "TimelineEvent": obj(
        ["id", "seq", "type", "execution_id", "pattern_id", "author_type", "title", "data", "at"],
        id={"type": "string"}, seq={"type": "integer"}, type={"type": "string", "enum": list(TYPES)},
        execution_id=NULL_ID, pattern_id=NULL_ID, author_type={"type": "string", "enum": ["user", "system", "agent"]},
        title=NULL_TEXT, data={"type": "object", "description": "the type's payload (its schema: docs/multi-phase.md)"},
        at={"type": "string"}),
    "RetryChainItem": _CHAIN_ITEM,
    "ExecutionTimeline": obj(["execution_id", "retry_chain", "items"], execution_id=ID,
                             retry_chain={"type": "array", "items": ref("RetryChainItem")},
                             items={"type": "array", "items": ref("TimelineEvent")}),
    "PatternTimeline": obj(["pattern_id", "items"], pattern_id=ID,
                           items={"type": "array", "items": ref("TimelineEvent")}),
    "RetryChain": obj(["execution_id", "items"], execution_id=ID,
                      items={"type": "array", "items": ref("RetryChainItem")}),
    "PatternWorkspace": obj(
        ["id", "pattern_type", "name", "category", "status", "version", "feedback_count", "created_at",
         "approved_at", "verified_at"],
        id=ID, pattern_type={"type": "string"}, name={"type": "string"}, category={"type": "string"},
        status={"type": "string", "enum": ["soon", "implementing", "beta", "in_review", "verified"]},
        version={"type": "string"}, feedback_count={"type": "integer", "minimum": 0}, created_at=NULL_TIME,
        approved_at=NULL_TIME, verified_at=NULL_TIME),
    "FeedbackSent": obj(["execution_id", "pattern_id", "feedback_ids"], execution_id=ID, pattern_id=ID,
                        feedback_ids={"type": "array", "items": ID}),
}

_AFTER = {"type": "integer", "minimum": 0, "description": "only events after this `seq` (a stream's last `id:`)"}
_STEP_ID = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,99}$"}


def paths(op: Callable[..., dict[str, Any]], query: Callable[..., dict[str, Any]], path: Callable[..., dict[str, Any]],
          ok: Callable[..., dict[str, Any]], errors: Callable[..., dict[str, Any]],
          idempotency_key: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The multi-phase paths, built with ``api.spec``'s helpers (passed in: no import cycle)."""
    body = (400, 413, 422)
    execution, pattern = path("execution_id"), path("pattern_id")
    after = query("after", _AFTER, "only events after this seq")
    limit = query("limit", {"type": "integer", "minimum": 1, "maximum": timeline.MAX_READ, "default": 500},
                  "the most events returned")
    stream_ok = {"200": {"description": "Server-Sent Events: `id: <seq>`, `event: <type>`, `data: <event JSON>`; "
                                        "a last `event: end`",
                         "content": {"text/event-stream": {"schema": {
                             "type": "object", "description": "one event: `data` is a TimelineEvent as JSON "
                                                              "(`{\"ended\": bool}` for the last, `end`)",
                             "properties": {"event": {"type": "string"}, "data": {"type": "string"},
                                            "id": {"type": "string"}}}}}}}
    return {
        "/executions/{execution_id}/timeline": {"get": op(
            "getExecutionTimeline", "The typed timeline of an execution and its retry chain, oldest first",
            "executions:read", {**ok(200, "ExecutionTimeline", "the timeline"), **errors(404, 422)},
            tags=("timeline",), params=[execution, after, limit])},
        "/executions/{execution_id}/timeline/stream": {"get": op(
            "streamExecutionTimeline", "The timeline as Server-Sent Events: stored events, then live ones, "
            "until the retry chain ends or `wait` seconds pass", "executions:read",
            {**stream_ok, **errors(404, 422)}, tags=("timeline",),
            params=[execution, after, query("wait", {"type": "integer", "minimum": 1, "maximum": MAX_WAIT,
                                                     "default": 30}, "seconds the stream stays open at most")])},
        "/executions/{execution_id}/retries": {"get": op(
            "getRetryChain", "The automatic retries of an execution: its chain of linked executions, first to last",
            "executions:read", {**ok(200, "RetryChain", "the chain"), **errors(404)}, tags=("timeline",),
            params=[execution])},
        "/pattern-workspaces": {"post": op(
            "createPatternWorkspace", "Create a pattern workspace (one per pattern type in a workspace)",
            "workflows:write", {**ok(201, "PatternWorkspace", "created"), **errors(409, *body)},
            tags=("patterns",), example={"pattern_type": "swings", "name": "Swing highs and lows"},
            body=closed(["pattern_type", "name"], pattern_type={"type": "string", "minLength": 1, "maxLength": 50},
                        name={"type": "string", "minLength": 1, "maxLength": 200},
                        category={"type": "string", "minLength": 1, "maxLength": 50},
                        description={"type": "string", "maxLength": 10_000}))},
        "/pattern-workspaces/{pattern_id}": {"get": op(
            "getPatternWorkspace", "A pattern workspace", "workflows:read",
            {**ok(200, "PatternWorkspace", "the pattern workspace"), **errors(404)}, tags=("patterns",),
            params=[pattern])},
        "/pattern-workspaces/{pattern_id}/timeline": {"get": op(
            "getPatternTimeline", "The typed timeline of a pattern workspace (all its runs), oldest first",
            "executions:read", {**ok(200, "PatternTimeline", "the timeline"), **errors(404, 422)},
            tags=("patterns",), params=[pattern, after, limit])},
        "/pattern-workspaces/{pattern_id}/feedback": {"post": op(
            "sendPatternFeedback", "Send a batch of feedback items: starts an agent run of the pattern-feedback "
            "workflow (phases, checkpoints, commit, deploy, approvals)", "executions:write",
            {**ok(202, "FeedbackSent", "the run started"), **errors(404, 409, *body)}, tags=("patterns",),
            example={"items": [{"content": "the swing high at 10:05 was missed"}]},
            params=[pattern, idempotency_key(
                "a retry with the same key (for the same pattern workspace) and the same items gets the same "
                "answer and run, never a second batch; the same key with other items is a 409")],
            body=closed(["items"], items={"type": "array", "minItems": 1, "maxItems": workspaces.MAX_BATCH,
                                          "items": closed(["content"], content={
                                              "type": "string", "minLength": 1, "maxLength": workspaces.MAX_CONTENT},
                                              data={"type": "object"})}))},
        "/pattern-workspaces/{pattern_id}/approve": {"post": op(
            "approvePatternRun", "Approve (or reject) the approval waiting in a run: the user approval, then the "
            "admin verification (its step's role decides who may)", "executions:write",
            {**ok(200, "ApprovalDecision", "decided"), **errors(404, 409, *body)}, tags=("patterns",),
            example={"execution_id": "0b7c1f2e-8f5d-4c36-9d43-2a1f6c9e5b10", "approved": True},
            params=[pattern],
            body=closed(["execution_id"], execution_id=ID, step_id=_STEP_ID,
                        approved={"type": "boolean", "default": True},
                        comment={"type": "string", "maxLength": 2000}))},
    }


def _sse(event: dict[str, Any]) -> bytes:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _chain_ended(execution_id: str) -> bool:
    with database.connection_context():
        row = Execution.get_or_none(Execution.id == execution_id)
        if row is None:
            return True
        last = retries.chain(row)[-1]
        return last.status in TERMINAL


def stream(mongo_db: Any, workspace_id: Any, execution_id: str, *, after: int, wait: float) -> Iterator[bytes]:
    """The SSE body: stored events after ``after``, then live ones (see the module doc)."""
    deadline = time.monotonic() + wait
    seen: set[str] = set()
    with database.connection_context():
        ids = [str(e.id) for e in retries.chain(Execution.get_by_id(execution_id))]
    client = get_redis()
    pubsub = client.pubsub(ignore_subscribe_messages=True) if client is not None else None
    try:
        if pubsub is not None:
            pubsub.subscribe(*[channel(i) for i in ids])

        def stored() -> list[dict[str, Any]]:
            if mongo_db is None:
                return []
            found = timeline.read(mongo_db, workspace_id=workspace_id, execution_ids=ids, after_seq=after)
            return [e for e in found if e["id"] not in seen]

        def fresh(events: list[dict[str, Any]]) -> Iterator[bytes]:
            for event in events:
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                child = event["data"].get("child_execution_id") if event["type"] == "retry_scheduled" else None
                if child and child not in ids:
                    ids.append(child)
                    if pubsub is not None:
                        pubsub.subscribe(channel(child))
                yield _sse(event)

        yield from fresh(stored())
        quiet_since = last_sent = time.monotonic()
        ended = _chain_ended(execution_id)
        while not ended and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0) if pubsub is not None else None
            if pubsub is None:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            events: list[dict[str, Any]] = []
            if message is not None and message.get("type") == "message":
                try:
                    updates = json.loads(message["data"]).get("updates", [])
                except (ValueError, AttributeError):
                    updates = []
                events = [u["timeline"] for u in updates if isinstance(u, dict) and isinstance(u.get("timeline"), dict)]
                events = [e for e in events if int(e.get("seq", 0)) > after]
            now = time.monotonic()
            if not events and now - quiet_since >= REREAD_SECONDS:
                events, quiet_since = stored(), now
                ended = _chain_ended(execution_id)
            if events:
                quiet_since = last_sent = now
                yield from fresh(events)
                if any(e["type"] in ("status_changed", "failed") for e in events):
                    ended = _chain_ended(execution_id)
            elif now - last_sent >= KEEPALIVE_SECONDS:
                last_sent = now
                yield b": keep-alive\n\n"
        if ended:
            yield from fresh(stored())  # events written between the last read and the end
        yield f"event: end\ndata: {json.dumps({'ended': ended})}\n\n".encode()
    finally:
        if pubsub is not None:
            pubsub.close()


def _timeline(call: Any) -> Any:
    p = call.params
    return workspaces.read_timeline(call.actor, call.mongo(), execution_id=call.path["execution_id"],
                                    after=p.get("after"), limit=p.get("limit"))


def _pattern_timeline(call: Any) -> Any:
    p = call.params
    return workspaces.read_timeline(call.actor, call.mongo(), pattern_id=call.path["pattern_id"],
                                    after=p.get("after"), limit=p.get("limit"))


def handlers(result: Callable[..., Any]) -> dict[str, Callable[[Any], Any]]:
    """operationId -> handler of an ``api.handlers.Call``; ``result`` is ``api.handlers.Result``."""

    def stream_timeline(call: Any) -> Any:
        execution = queries.get_execution(call.actor, call.path["execution_id"])
        after = workspaces.parse_int(call.params.get("after"), "after", 0, 2**63 - 1, 0)
        wait = workspaces.parse_int(call.params.get("wait"), "wait", 1, MAX_WAIT, 30)
        body = stream(call.mongo(), execution.workspace_id, str(execution.id), after=after, wait=wait)
        return result(200, stream=body, media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def feedback(call: Any) -> Any:
        sent, outgoing = workspaces.send_feedback(call.actor, call.path["pattern_id"], call.body.get("items"),
                                                  idempotency_key=call.params.get("Idempotency-Key"))
        return result(202, sent, publish=outgoing)

    def approve(call: Any) -> Any:
        b = call.body
        decision, outgoing = workspaces.decide(call.actor, call.path["pattern_id"], b.get("execution_id"),
                                               approved=b.get("approved", True), comment=b.get("comment", ""),
                                               step_id=b.get("step_id"))
        return result(200, decision, publish=outgoing)

    return {
        "getExecutionTimeline": lambda call: result(200, _timeline(call)),
        "streamExecutionTimeline": stream_timeline,
        "getRetryChain": lambda call: result(200, workspaces.retry_chain(call.actor, call.path["execution_id"])),
        "createPatternWorkspace": lambda call: result(201, workspaces.create(
            call.actor, call.body.get("pattern_type"), call.body.get("name"), call.body.get("category", "pattern"),
            call.body.get("description"))),
        "getPatternWorkspace": lambda call: result(200, workspaces.pattern_dict(
            workspaces.get(call.actor, call.path["pattern_id"]))),
        "getPatternTimeline": lambda call: result(200, _pattern_timeline(call)),
        "sendPatternFeedback": feedback,
        "approvePatternRun": approve,
    }


__all__ = ["SCHEMAS", "handlers", "paths", "stream"]
