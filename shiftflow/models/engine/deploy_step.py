"""The ``deploy`` step: start a deployment, then poll it between durable timers.

``with: {url?, project, ref, environment?, metadata?, connection?, poll_seconds?, max_polls?}``:
``url`` is the deploy API's root (``{{ vars.deploy_url }}``). ``connection`` names a workspace
connection whose credentials hold the bearer ``token`` (or ``api_key``) and may hold the
``base_url`` used when ``url`` is not given: the token reaches only the request header, never
the step's stored inputs, output or timeline.

First delivery: start the deployment with ``Idempotency-Key: <execution>:<step>:<iteration>``
(a crash before the checkpoint repeats the start, and the service answers with the same
deployment), checkpoint its id, add ``deploy_started`` to the timeline. Every delivery then
reads its status once: ``ready`` completes the step (``deploy_success``), ``error`` or
``canceled`` fails it (``deploy_failed``), anything else parks the step PENDING for
``poll_seconds`` (a durable timer: no worker, no message is held while it builds). A
5xx or refused connection is retried by the step's ``retry`` policy (``deploy_retry``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shiftflow.kernel import deploy_client
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.models.engine import connection_secrets, mongo_log, runs
from shiftflow.models.engine.checkpoints import StepContext
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import StepExecution
from shiftflow.models.tables.patterns import PatternRun

DEFAULT_POLL_SECONDS = 5.0
MIN_POLL_SECONDS = 0.1
DEFAULT_MAX_POLLS = 720


class DeployError(PermanentError):
    """Raised when a deploy step's inputs are wrong, or the deployment ended in error."""


def _credentials(workspace_id: Any, inputs: dict[str, Any]) -> tuple[str | None, str | None]:
    """(token, base_url) of the connection the step names, or (None, None) without one."""
    name = inputs.get("connection")
    if name is None:
        return None, None
    if not isinstance(name, str) or not name:
        raise DeployError("with.connection: expected the name of a workspace connection")
    try:
        creds = connection_secrets.for_workspace(workspace_id)[name]
    except KeyError:
        raise DeployError(f"with.connection: no active connection {name!r} in this workspace") from None
    token = creds.get("token") or creds.get("api_key") if isinstance(creds, dict) else None
    base = creds.get("base_url") if isinstance(creds, dict) else None
    return (token if isinstance(token, str) else None), (base if isinstance(base, str) else None)


def _inputs(inputs: Any, base_url: str | None) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise DeployError("with: a deploy step needs url, project and ref")
    if base_url and not inputs.get("url"):
        inputs = {**inputs, "url": base_url}
    for name in ("url", "project", "ref"):
        if not isinstance(inputs.get(name), str) or not inputs[name].strip():
            raise DeployError(f"with.{name}: required, a non-empty string")
    if not inputs["url"].startswith(("http://", "https://")):
        raise DeployError("with.url: expected the deploy API's http(s) root")
    try:
        poll = float(inputs.get("poll_seconds", DEFAULT_POLL_SECONDS))
        max_polls = int(inputs.get("max_polls", DEFAULT_MAX_POLLS))
    except (TypeError, ValueError):
        raise DeployError("with.poll_seconds/max_polls: expected numbers") from None
    if poll < MIN_POLL_SECONDS or max_polls < 1:
        raise DeployError(f"with.poll_seconds: at least {MIN_POLL_SECONDS}; with.max_polls: at least 1")
    metadata = inputs.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise DeployError("with.metadata: expected an object")
    return {**inputs, "poll_seconds": poll, "max_polls": max_polls}


def _event(deployment: dict[str, Any], step_id: str) -> dict[str, Any]:
    data = {"deployment_id": deployment["id"], "status": deployment["status"], "step_id": step_id,
            "url": deployment.get("url"), "error": deployment.get("error")}
    for name in ("project", "ref"):
        if isinstance(deployment.get(name), str):
            data[name] = deployment[name]
    return data


def _pattern_run(execution_id: Any, **fields: Any) -> None:
    PatternRun.update(**fields).where(PatternRun.execution == execution_id).execute()


def run_deploy_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """The ``deploy`` step's handler (``run_step.register_handler``).

    Raises:
        DeployError: bad inputs, a deployment that ended in error or was canceled, or too many polls.
        TransientError: the deploy API is unreachable or failing (the step's retry policy applies).
    """
    assert claim.step is not None
    token, base_url = _credentials(claim.execution.workspace_id, inputs if isinstance(inputs, dict) else {})
    spec = _inputs(inputs, base_url)
    ctx = StepContext(claim)
    state = ctx.last_checkpoint() or {}
    try:
        if not state.get("deployment_id"):
            ctx.report(phase="deploying")
            key = f"{claim.execution.id}:{claim.step.step_id}:{claim.step.iteration}"
            deployment = deploy_client.start(spec["url"], project=spec["project"], ref=spec["ref"],
                                             environment=spec.get("environment"), metadata=spec.get("metadata"),
                                             token=token, key=key)
            state = {"deployment_id": deployment["id"], "status": deployment["status"], "polls": 0}
            ctx.checkpoint(state, phase="deploying")
            ctx.emit("deploy_started", _event(deployment, claim.step.step_id))
            _pattern_run(claim.execution.id, deploy_started_at=utcnow(), deploy_status="queued")
        else:
            deployment = deploy_client.status(spec["url"], state["deployment_id"], token=token)
    except TransientError as exc:
        ctx.emit("deploy_retry", {"reason": str(exc)[:2000], "attempt": claim.step.retry_count + 1,
                                  "step_id": claim.step.step_id,
                                  **({"deployment_id": state["deployment_id"]} if state.get("deployment_id") else {})})
        raise
    status = deployment["status"]
    if status == "ready":
        ctx.emit("deploy_success", _event(deployment, claim.step.step_id))
        _pattern_run(claim.execution.id, deploy_status="ready", deploy_url=deployment.get("url"),
                     deploy_completed_at=utcnow())
        output = {"deployment_id": deployment["id"], "status": status, "url": deployment.get("url"),
                  "polls": state.get("polls", 0)}
        return runs.complete_step(claim, output, stored)
    if status in ("error", "canceled"):
        ctx.emit("deploy_failed", _event(deployment, claim.step.step_id))
        _pattern_run(claim.execution.id, deploy_status=status, deploy_completed_at=utcnow())
        raise DeployError(f"deployment {deployment['id']} ended {status}: {deployment.get('error') or ''}".strip())
    polls = int(state.get("polls", 0)) + 1
    if polls > spec["max_polls"]:
        raise DeployError(f"deployment {deployment['id']} still {status} after {spec['max_polls']} polls")
    if status != state.get("status"):
        if status == "building":
            ctx.emit("deploy_building", _event(deployment, claim.step.step_id))
        _pattern_run(claim.execution.id, deploy_status=status if status in ("queued", "building") else None)
    ctx.checkpoint({**state, "status": status, "polls": polls}, phase="deploying")
    _park(claim, spec["poll_seconds"], f"deployment {deployment['id']} is {status}")
    return []


def _park(claim: runs.Claim, seconds: float, why: str) -> None:
    """Park the step PENDING until the next poll (the timer loop re-publishes it).

    The poll is not a delivery that died: ``attempts`` is given back, so the delivery limit
    (which counts deliveries without an outcome) does not mistake a long build for a poison
    message.
    """
    assert claim.step is not None
    resume = utcnow() + dt.timedelta(seconds=seconds)
    with runs.transaction():
        StepExecution.update(status="PENDING", claimed_by=None, resume_at=resume, timeout_at=None,
                             attempts=StepExecution.attempts - 1).where(
            (StepExecution.id == claim.step.id) & (StepExecution.status == "RUNNING")).execute()
        mongo_log.execution_log(claim.execution, f"step {claim.step.step_id}: {why}, next poll in {seconds:g} s",
                                step_id=claim.step.step_id)
