"""The workflows the harness tests run, and storing one in a test's database."""

from __future__ import annotations

from typing import Any


def two_call_definition(name: str, url: str) -> dict[str, Any]:
    """condition → http → transform → http → transform; both calls name their step."""
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
            http_step("call", "{{ trigger.n }}"),
            {
                "id": "shape",
                "type": "transform",
                "with": {"output": {"n": "{{ steps.call.output.json.echo.n }}"}},
            },
            http_step("confirm", "{{ steps.shape.output.n }}"),
            {
                "id": "done",
                "type": "transform",
                "with": {"output": {"n": "{{ steps.confirm.output.json.echo.n }}"}},
            },
        ],
    }


def http_step(step_id: str, n: str, **extra: Any) -> dict[str, Any]:
    """An HTTP step that POSTs to ``{{ vars.url }}`` naming its execution and step."""
    return {
        "id": step_id,
        "type": "http",
        **extra,
        "with": {
            "method": "POST",
            "url": "{{ vars.url }}",
            "json": {"execution": "{{ execution.id }}", "step": step_id, "n": n},
        },
    }


def create_workflow(pg_url: str, definition: dict[str, Any], workspace: str = "rel") -> str:
    """Store ``definition`` in the database at ``pg_url``; return the workflow id."""
    from shiftflow.kernel.db import bind_database
    from shiftflow.models.manage import catalog

    db = bind_database(pg_url)
    try:
        with db.connection_context():
            return str(catalog.apply_definition(catalog.ensure_workspace(workspace), definition).workflow.id)
    finally:
        close_all = getattr(db, "close_all", None)  # the pooled database keeps idle connections
        if close_all is not None:
            close_all()
        db.close()
