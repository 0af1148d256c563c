"""The shipped pattern-feedback workflow: agent phases, deploy, user approval, admin verification.

A batch of feedback on a pattern workspace starts one execution of it (``workspaces.send_feedback``):

1. ``agent`` (``task: agent.phased``): planning, implementing, testing, refining, with
   checkpoints; ends with a commit.
2. ``deploy``: deploys the commit (``vars.deploy_url``, ``vars.deploy_project``) and polls
   it to ready.
3. ``user_approval``: an approval any member may decide (the person who sent the feedback
   checks the deployed pattern).
4. ``admin_verification``: an approval only an admin or owner may decide.

A failed execution is retried as a child execution (``retries``), resuming the agent from its
checkpoint. A workspace gets this definition the first time it sends feedback, unless it
already has a workflow of this name (apply your own version to point ``vars.deploy_url`` at
your deploy API, or to swap the agent task).
"""

from __future__ import annotations

import copy
from typing import Any

from shiftflow.models.manage.catalog import apply_definition
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

NAME = "pattern-feedback"
#: Where the deploy API is by default: the fake deploy service of dev mode.
DEV_DEPLOY_URL = "http://127.0.0.1:8790/v1"

DEFINITION: dict[str, Any] = {
    "name": NAME,
    "description": "Feedback on a pattern: an agent implements it in phases, deploys it, a user approves "
                   "and an admin verifies.",
    "trigger": {"type": "manual"},
    "vars": {"deploy_url": DEV_DEPLOY_URL, "deploy_project": "patterns", "poll_seconds": 1},
    "retries": {"max": 10, "backoff": 5, "max_backoff": 600},
    "steps": [
        {"id": "agent", "type": "task", "with": {
            "task": "agent.phased", "pattern": "{{ trigger.pattern_type }}", "feedback": "{{ trigger.feedback }}",
            "units": 3, "unit_seconds": 0.5}},
        {"id": "deploy", "type": "deploy", "with": {
            "url": "{{ vars.deploy_url }}", "project": "{{ vars.deploy_project }}",
            "ref": "{{ steps.agent.output.commit.hash }}", "poll_seconds": "{{ vars.poll_seconds }}",
            "metadata": {"pattern": "{{ trigger.pattern_type }}"}}},
        {"id": "user_approval", "type": "approval", "with": {"role": "member", "kind": "approval"},
         "timeout": 604800},
        {"id": "admin_verification", "type": "approval", "with": {"role": "admin", "kind": "verification"},
         "timeout": 604800},
    ],
}


def definition(**vars_: Any) -> dict[str, Any]:
    """The shipped definition, with some ``vars`` replaced (``deploy_url``...)."""
    made = copy.deepcopy(DEFINITION)
    made["vars"].update(vars_)
    return made


def installed(workspace_id: Any) -> Workflow | None:
    """The workspace's pattern-feedback workflow, if it has one."""
    return Workflow.get_or_none((Workflow.workspace == workspace_id) & (Workflow.name == NAME))


def install(workspace_id: Any, **vars_: Any) -> Workflow:
    """The workspace's pattern-feedback workflow, applied from ``DEFINITION`` when missing."""
    found = installed(workspace_id)
    if found is not None:
        return found
    return apply_definition(Workspace.get_by_id(workspace_id), definition(**vars_)).workflow
