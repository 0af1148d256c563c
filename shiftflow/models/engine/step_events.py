"""What a step's outcome leaves besides its row: an analytics event and a trace span.

``step_executed`` documents in ``analytics_events`` (step id, type, status, duration,
iteration) are what ``models.manage.analytics`` reads for per-step success rates and durations;
the span is the step's in the execution's trace (``kernel.tracing``, nothing when off).
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel import tracing
from shiftflow.models.engine import mongo_log
from shiftflow.models.tables.executions import Execution

#: Outcomes that are counted (WAITING, a parked retry, is not one).
FINAL = tracing.FINAL_STEP_STATUSES


def step_finished(execution: Execution, step_id: str, step_type: str, status: str,
                  metadata: dict[str, Any]) -> None:
    """Write the ``step_executed`` event and the step's span for a final step outcome."""
    if status not in FINAL:
        return
    duration = metadata.get("durationMs")
    iteration = int(metadata.get("iteration") or 0)
    mongo_log.analytics_event("step_executed", execution, {"stepId": step_id, "type": step_type, "status": status.lower(),
                                                      "duration": duration, "iteration": iteration})
    tracing.step_span(execution.id, execution.workflow_id, step_id, step_type, status, duration_ms=duration,
                      iteration=iteration, error=metadata.get("error"))
