"""``agent.phased``: a stand-in coding agent that works through phases with checkpoints.

It is what the shipped pattern-feedback workflow runs where a real agent (an LLM editing a
repository) would: for each phase (planning, implementing, testing, refining by default) it
reports the phase and its progress, does ``units`` units of work (each ``unit_seconds``
long; when ``notify_url`` is given, each unit is POSTed there as
``{"execution", "step": <phase>, "unit"}``, which is how tests count the work), and
checkpoints the phases done. Interrupted, the next delivery skips the phases its checkpoint
lists. At the end it "commits": a hash derived from the feedback, added to the timeline and
to the run's ``PatternRun``.

``fail_attempts: N`` makes the first N executions of a retry chain fail after their first
phase (to show automatic retries resuming from a checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx

from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.kernel.phases import PHASES, check_phase
from shiftflow.models.engine.checkpoints import StepContext
from shiftflow.models.engine.tasks import register_task
from shiftflow.models.tables.patterns import PatternRun

NAME = "agent.phased"
DEFAULT_PHASES = ("planning", "implementing", "testing", "refining")
MAX_UNITS = 1000


class AgentError(PermanentError):
    """Raised when the agent's inputs are wrong, or when it was asked to fail."""


def _phases(value: Any) -> list[str]:
    if value is None:
        return list(DEFAULT_PHASES)
    if not isinstance(value, list) or not value:
        raise AgentError("with.phases: expected a non-empty list of phases")
    return [check_phase(v) for v in value]


def _notify(url: str | None, execution_id: Any, phase: str, unit: int) -> None:
    if not url:
        return
    try:
        response = httpx.post(url, json={"execution": str(execution_id), "step": phase, "unit": unit}, timeout=10)
    except httpx.HTTPError as exc:
        raise TransientError(f"notify_url: {exc}") from None
    if response.status_code >= 500:
        raise TransientError(f"notify_url: {response.status_code}")


def run(ctx: StepContext, params: dict[str, Any]) -> dict[str, Any]:
    """Work through the phases, resuming after the last checkpointed one; return the commit."""
    phases = _phases(params.get("phases"))
    try:
        units = int(params.get("units", 3))
        unit_seconds = float(params.get("unit_seconds", 0.2))
        fail_attempts = int(params.get("fail_attempts", 0))
    except (TypeError, ValueError):
        raise AgentError("with.units/unit_seconds/fail_attempts: expected numbers") from None
    if not 1 <= units <= MAX_UNITS or not 0 <= unit_seconds <= 60:
        raise AgentError(f"with.units: 1 to {MAX_UNITS}; with.unit_seconds: 0 to 60")
    notify = params.get("notify_url") if isinstance(params.get("notify_url"), str) else None
    done: list[str] = list((ctx.last_checkpoint() or {}).get("done", []))
    for index, phase in enumerate(phases):
        if phase in done:
            continue  # checkpointed before an interruption: not done again
        ctx.report(phase=phase, progress=int(100 * index / len(phases)), message=f"{phase} started")
        for unit in range(units):
            _notify(notify, ctx.execution_id, phase, unit)
            time.sleep(unit_seconds)
        done.append(phase)
        ctx.checkpoint({"done": done}, phase=phase)
        if ctx.retry_count < fail_attempts:
            raise AgentError(f"{phase}: failed on attempt {ctx.retry_count + 1} (fail_attempts={fail_attempts})")
    feedback = params.get("feedback", [])
    digest = hashlib.sha1(json.dumps([str(ctx.execution_id), feedback], sort_keys=True, default=str).encode())
    commit = {"hash": digest.hexdigest(), "message": f"Apply {len(feedback) if isinstance(feedback, list) else 0} "
                                                     "feedback item(s)",
              "files_changed": [f"patterns/{params.get('pattern', 'pattern')}.py"]}
    ctx.emit("commit", commit, title="commit")
    PatternRun.update(commit_hash=commit["hash"], commit_message=commit["message"],
                      files_changed=commit["files_changed"]).where(PatternRun.execution == ctx.execution_id).execute()
    ctx.report(progress=100)
    return {"commit": commit, "phases": done}


register_task(NAME, run)
__all__ = ["NAME", "PHASES", "run"]
