"""The ``workflow`` label of the business metrics: ``<workspace slug>/<workflow name>``.

``kernel.observe`` cannot read the database (the kernel imports no models), so a worker
installs this resolver at boot (``consumers.boot``); ``observe.BoundedLabels`` calls it
once per workflow id and bounds how many distinct labels a process makes.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel import observe
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

#: Longer names are cut: a label is for reading on a dashboard, not an identifier.
MAX_LABEL_CHARS = 120


def workflow_label(workflow_id: Any) -> str | None:
    """``slug/name`` of a workflow; None when it does not exist (any more)."""
    row = (Workflow.select(Workspace.slug, Workflow.name).join(Workspace)
           .where(Workflow.id == workflow_id).tuples().first())
    return None if row is None else f"{row[0]}/{row[1]}"[:MAX_LABEL_CHARS]


def install() -> None:
    """Label this process's workflow metrics by name."""
    observe.WORKFLOWS.resolve = workflow_label
