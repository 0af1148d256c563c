"""Dev mode's multi-phase part: the fake deploy service, the example and the pattern flow.

Started by ``cli.dev``: the fake deploy service on real time (port 8790 when free), the
``multi-phase-demo`` example (``shiftflow/examples/multi_phase.yaml``, the packaged copy of
``examples/multi_phase/workflow.yaml``) and the shipped ``pattern-feedback`` workflow, both
pointed at the fake. Nothing is run: the banner says how.
"""

from __future__ import annotations

import socket
from importlib import resources
from typing import Any

import yaml

from shiftflow.fakes.deploy import FakeDeploy, FakeDeployServer, SystemClock
from shiftflow.models.manage import catalog
from shiftflow.models.patterns import flow

#: The fake deploy service's port in dev mode (what the example's ``vars.deploy_url`` names).
DEPLOY_PORT = 8790


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start(workspace: Any) -> tuple[FakeDeployServer, list[str]]:
    """Serve the fake deploy service and apply the two workflows to ``workspace``.

    Returns:
        The running server (stop it on exit) and the banner's lines.
    """
    server = FakeDeployServer(FakeDeploy(clock=SystemClock()), port=DEPLOY_PORT if _port_free(DEPLOY_PORT) else 0)
    server.start()
    text = resources.files("shiftflow.examples").joinpath("multi_phase.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    data["vars"]["deploy_url"] = server.base_url
    applied = catalog.apply_definition(workspace, data)
    flow.install(workspace.id, deploy_url=server.base_url)
    return server, [
        f"Fake deploy service: {server.base_url} (the `deploy` steps of multi-phase-demo and pattern-feedback use it)",
        f"  Run the multi-phase example: POST /api/v1/workflows/{applied.workflow.id}/run, then "
        "GET /api/v1/executions/<id>/timeline/stream",
    ]
