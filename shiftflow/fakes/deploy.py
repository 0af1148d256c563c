"""A local deploy service for tests and dev mode: what a ``deploy`` step talks to. Loopback only.

The API (JSON; errors are ``{"error": {"code", "message", "field"?}}``):

* ``POST /v1/deployments`` ``{"project", "ref", "environment"?, "metadata"?}`` -> 201 and
  the deployment, ``status: queued``. With an ``Idempotency-Key`` header, the same key
  and body answer 200 with the same deployment (``Idempotent-Replayed: true``), so a
  retried create never starts a second deployment; the same key with another body is a 422.
* ``GET /v1/deployments/{id}`` -> the deployment; its ``status`` moves with time:
  ``queued`` -> ``building`` -> ``ready`` (with a ``url``), or ``error`` (with an
  ``error``) or ``canceled`` when asked for; ``events`` lists each change with its time.
* ``GET /v1/deployments?project=P`` -> ``{"deployments": [...]}``, newest first.
* ``POST /v1/deployments/{id}/cancel`` -> the deployment, ``canceled``; 409 once it is
  ``ready``, ``error`` or ``canceled``.
* With ``token`` set, every call needs ``Authorization: Bearer <token>`` (else 401).

How a deployment ends: ``ready`` unless its ``metadata.fake_outcome`` says ``error`` or
``canceled`` (the service gives up or cancels it itself when the build would end), or the
test queued an outcome with ``next_outcome(...)``. Time comes from a clock: ``FakeClock``
(moves only with ``advance``, for tests) or ``SystemClock`` (real time, for dev mode),
with ``Timings`` (seconds queued, seconds building). Faults: ``fail_next(status, count,
retry_after)`` answers the next calls with an error (429 with ``Retry-After``, 500...).

``/_fake/...`` routes expose the controls over HTTP: ``POST /_fake/advance {"seconds"}``,
``POST /_fake/outcome {"outcome"}``, ``POST /_fake/fail {"status", "count", "retry_after"}``,
``GET /_fake/requests``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shiftflow.fakes.threaded_http import BackgroundServer, TrackedHandler

__all__ = ["FakeClock", "FakeDeploy", "FakeDeployServer", "SystemClock", "Timings"]

OUTCOMES = ("ready", "error", "canceled")
TERMINAL = frozenset(OUTCOMES)
_FIELDS = {"project", "ref", "environment", "metadata"}
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_ROUTE = re.compile(r"^/v1/deployments(?:/(?P<id>[^/?]+)(?P<cancel>/cancel)?)?/?(?:\?(?P<query>.*))?$")


class Clock(Protocol):
    """Where the fake reads the time (Unix seconds)."""

    def now(self) -> float:
        """The current time."""
        ...


class SystemClock:
    """Real time (dev mode, the CLI)."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = 1_735_689_600.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        """The fake time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the time forward."""
        with self._lock:
            self._now += seconds


@dataclass(frozen=True)
class Timings:
    """Seconds a deployment stays queued, then building, before it ends."""

    queued: float = 1.0
    building: float = 3.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FakeDeployment:
    """One deployment; its status is read from the clock, never stored."""

    id: str
    project: str
    ref: str
    environment: str
    metadata: dict[str, Any]
    created: float
    outcome: str
    timings: Timings
    canceled_at: float | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""

    def timeline(self, now: float) -> list[tuple[str, float]]:
        """The status changes up to ``now``: (status, when)."""
        building_at = self.created + self.timings.queued
        ends_at = building_at + self.timings.building
        events = [("queued", self.created)]
        if self.canceled_at is not None and self.canceled_at < ends_at:
            if self.canceled_at >= building_at:
                events.append(("building", building_at))
            return [*events, ("canceled", self.canceled_at)] if now >= self.canceled_at else events
        if now >= building_at:
            events.append(("building", building_at))
        if now >= ends_at:
            events.append((self.outcome, ends_at))
        return events

    def status(self, now: float) -> str:
        """The status at ``now``."""
        return self.timeline(now)[-1][0]

    def public(self, now: float) -> dict[str, Any]:
        """The deployment as the API shows it."""
        events = self.timeline(now)
        status = events[-1][0]
        return {
            "id": self.id,
            "project": self.project,
            "ref": self.ref,
            "environment": self.environment,
            "status": status,
            "url": f"https://{self.project}-{self.id.replace('_', '-')}.deploy.example" if status == "ready" else None,
            "error": "build failed (fake): exit code 1" if status == "error" else None,
            "created_at": _iso(self.created),
            "updated_at": _iso(events[-1][1]),
            "events": [{"status": s, "at": _iso(at)} for s, at in events],
            "metadata": self.metadata,
        }


class ApiError(Exception):
    """An error answer: status, code and message (and the field at fault, when one is)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


@dataclass
class RecordedDeployRequest:
    """One request as the fake saw it, and the status it answered."""

    method: str
    path: str
    body: Any
    status: int
    at: float = field(default_factory=time.time)


class FakeDeploy:
    """The fake deploy service's state (thread-safe).

    Parameters:
        clock: where time comes from; a ``FakeClock`` by default.
        timings: seconds queued and building.
        token: the bearer token every call must send (None: no authentication).
    """

    def __init__(self, *, clock: Clock | None = None, timings: Timings | None = None, token: str | None = None) -> None:
        self.lock = threading.Lock()
        self.clock: Clock = clock or FakeClock()
        self.timings = timings or Timings()
        self.token = token
        self.deployments: dict[str, FakeDeployment] = {}
        self.requests: list[RecordedDeployRequest] = []
        self._outcomes: list[str] = []
        self._failures: list[tuple[int, float | None]] = []
        self._count = 0

    # ------------------------------------------------------------------ controls

    def advance(self, seconds: float) -> None:
        """Move a ``FakeClock`` forward.

        Raises:
            TypeError: the clock is real time.
        """
        if not isinstance(self.clock, FakeClock):
            raise TypeError("this fake runs on real time: nothing to advance")
        self.clock.advance(seconds)

    def next_outcome(self, outcome: str) -> None:
        """End the next created deployment that does not name its own outcome this way."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
        with self.lock:
            self._outcomes.append(outcome)

    def fail_next(self, status: int = 500, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` API calls with ``status`` (and ``Retry-After`` when given)."""
        with self.lock:
            self._failures.extend([(status, retry_after)] * count)

    def get(self, deployment_id: str) -> dict[str, Any]:
        """A deployment as the API shows it now (tests)."""
        with self.lock:
            return self.deployments[deployment_id].public(self.clock.now())

    # ------------------------------------------------------------------ the API

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], Any]:
        """Answer one API call: (status, headers, JSON body)."""
        body: Any = None
        try:
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "invalid_json", "the body is not JSON") from None
            status, extra, payload = self._route(method, path, headers, body)
        except ApiError as exc:
            status, extra, payload = exc.status, exc.headers, exc.body()
        with self.lock:
            self.requests.append(RecordedDeployRequest(method, path, body, status))
        return status, extra, payload

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if self.token is not None and headers.get("authorization", "") != f"Bearer {self.token}":
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")
        with self.lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            status, retry_after = failure
            extra = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
            raise ApiError(status, "rate_limited" if status == 429 else "unavailable", f"fake failure {status}",
                           headers=extra)
        match = _ROUTE.match(path)
        if match is None:
            raise ApiError(404, "not_found", f"no route {method} {path}")
        deployment_id, cancel, query = match.group("id"), match.group("cancel"), match.group("query") or ""
        if deployment_id is None:
            if method == "POST":
                return self._create(headers, body)
            if method == "GET":
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                return self._list(params.get("project"))
        elif cancel and method == "POST":
            return self._cancel(deployment_id)
        elif not cancel and method == "GET":
            with self.lock:
                found = self.deployments.get(deployment_id)
                if found is None:
                    raise ApiError(404, "not_found", f"deployment {deployment_id} does not exist")
                return 200, {}, found.public(self.clock.now())
        raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}")

    def _create(self, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "expected a JSON object with project and ref")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ApiError(400, "invalid_request", f"{unknown[0]}: unknown field", unknown[0])
        project = body.get("project")
        if not isinstance(project, str) or not _PROJECT.match(project):
            raise ApiError(400, "invalid_request", "project: required, lower-case letters, digits, '.', '_' or '-'", "project")
        ref = body.get("ref")
        if not isinstance(ref, str) or not ref.strip() or len(ref) > 200:
            raise ApiError(400, "invalid_request", "ref: required, a commit, tag or branch", "ref")
        environment = body.get("environment", "production")
        if not isinstance(environment, str) or not environment:
            raise ApiError(400, "invalid_request", "environment: expected a non-empty string", "environment")
        metadata = body.get("metadata")
        metadata = {} if metadata is None else metadata
        if not isinstance(metadata, dict):
            raise ApiError(400, "invalid_request", "metadata: expected an object", "metadata")
        asked = metadata.get("fake_outcome")
        if asked is not None and asked not in OUTCOMES:
            raise ApiError(400, "invalid_request", f"metadata.fake_outcome: expected one of {', '.join(OUTCOMES)}",
                           "metadata.fake_outcome")
        key = headers.get("idempotency-key")
        fingerprint = json.dumps(body, sort_keys=True)
        with self.lock:
            if key:
                for existing in self.deployments.values():
                    if existing.idempotency_key == key:
                        if existing.fingerprint != fingerprint:
                            raise ApiError(422, "idempotency_key_reused",
                                           "this Idempotency-Key was used with another body")
                        return 200, {"idempotent-replayed": "true"}, existing.public(self.clock.now())
            outcome = asked or (self._outcomes.pop(0) if self._outcomes else "ready")
            self._count += 1
            deployment = FakeDeployment(
                id=f"dep_{self._count:06d}",
                project=project,
                ref=ref,
                environment=environment,
                metadata=metadata,
                created=self.clock.now(),
                outcome=outcome,
                timings=self.timings,
                idempotency_key=key or None,
                fingerprint=fingerprint,
            )
            self.deployments[deployment.id] = deployment
            return 201, {}, deployment.public(self.clock.now())

    def _list(self, project: str | None) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            now = self.clock.now()
            found = [d.public(now) for d in reversed(self.deployments.values()) if project in (None, d.project)]
        return 200, {}, {"deployments": found}

    def _cancel(self, deployment_id: str) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            found = self.deployments.get(deployment_id)
            if found is None:
                raise ApiError(404, "not_found", f"deployment {deployment_id} does not exist")
            now = self.clock.now()
            status = found.status(now)
            if status in TERMINAL:
                raise ApiError(409, "not_cancelable", f"deployment {deployment_id} is {status}: only a queued or "
                               "building deployment can be canceled")
            found.canceled_at = now
            return 200, {}, found.public(now)


class _Handler(TrackedHandler):
    def _api(self, method: str) -> None:
        raw = self.read_body() if method == "POST" else b""
        fake: FakeDeploy = self.server.state
        if self.path.startswith("/_fake/"):
            self._control(method, self.path.removeprefix("/_fake/"), raw)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, payload = fake.handle(method, self.path, headers, raw)
        self.send_json(status, payload, extra)

    def do_GET(self) -> None:
        self._api("GET")

    def do_POST(self) -> None:
        self._api("POST")

    def _control(self, method: str, name: str, raw: bytes) -> None:
        fake: FakeDeploy = self.server.state
        if method == "GET" and name == "requests":
            with fake.lock:
                records = [{"method": r.method, "path": r.path, "body": r.body, "status": r.status, "at": r.at}
                           for r in fake.requests]
            self.send_json(200, records)
            return
        try:
            data = json.loads(raw or b"{}")
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            if method == "POST" and name == "advance":
                fake.advance(float(data.get("seconds", 0)))
            elif method == "POST" and name == "outcome":
                fake.next_outcome(str(data.get("outcome")))
            elif method == "POST" and name == "fail":
                fake.fail_next(**data)
            else:
                self.send_json(404, {"error": {"code": "not_found", "message": f"no control {method} {name}"}})
                return
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": {"code": "invalid_request", "message": str(exc)}})
            return
        self.send_json(200, {"ok": True})


class FakeDeployServer(BackgroundServer):
    """Serves a ``FakeDeploy`` over HTTP on 127.0.0.1 from background threads.

    Parameters:
        fake: the state to serve; a fresh ``FakeDeploy()`` (fake clock) by default.
        port: 0 picks a free port.

    Raises:
        OSError: the port is taken.
    """

    def __init__(self, fake: FakeDeploy | None = None, *, port: int = 0) -> None:
        self.fake = fake or FakeDeploy()
        super().__init__(_Handler, self.fake, port=port, name="fake-deploy")

    @property
    def base_url(self) -> str:
        """The API root a deploy step is given (``{url}/v1``)."""
        return self.url + "/v1"
