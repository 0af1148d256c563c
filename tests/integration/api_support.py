"""Shared set-up of the management API tests: a worker on real RabbitMQ, the HTTP app in
uvicorn, and seeded workspaces with a member and an API key per role."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import uvicorn

from shiftflow.consumers.boot import boot
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import apikeys, catalog
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.tenancy import User, Workspace, WorkspaceMember
from tests.support.message_tally import MessageTally
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http

#: A workflow that finishes on its own: a condition on the trigger, then a transform.
SIMPLE = {
    "name": "simple",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
        {"id": "shape", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
    ],
}


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL."""
    port = free_port()
    server = _Uvicorn(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def worker(real_env: dict[str, str], threads: int = 2, tally: MessageTally | None = None) -> Iterator[Settings]:
    """Settings on the test's services, the database bound, a worker consuming every queue.

    ``tally`` is added to the worker's broker, for tests that wait until every message
    they caused was handled.
    """
    settings = configure(Settings.from_env(real_env))
    broker = boot(settings)
    if tally is not None:
        broker.add_middleware(tally)
    broker.emit_after("process_boot")
    running = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    running.start()
    try:
        yield settings
    finally:
        running.stop()
        broker.emit_before("worker_shutdown", running)
        broker.close()


@dataclass
class Tenant:
    """A seeded workspace: its row, a key per role, and the users behind them."""

    workspace: Workspace
    keys: dict[str, str] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str = "OWNER") -> dict[str, str]:
        """The Authorization header of the role's key."""
        return {"Authorization": f"Bearer {self.keys[role]}"}


def seed_tenant(slug: str, roles: tuple[str, ...] = ("OWNER", "ADMIN", "MEMBER", "VIEWER")) -> Tenant:
    """A workspace with one member (and one API key, all scopes) per role."""
    workspace = catalog.ensure_workspace(slug)
    tenant = Tenant(workspace)
    for role in roles:
        user = User.create(email=f"{role.lower()}@{slug}.example", name=f"{role.title()} of {slug}")
        WorkspaceMember.create(workspace=workspace.id, user=user.id, role=role)
        row, text = apikeys.create_key(
            Principal.operator(workspace.id), name=f"{role.lower()} key", user_id=user.id
        )
        tenant.keys[role], tenant.users[role], tenant.key_ids[role] = text, user, str(row.id)
    return tenant


def fuzz(
    schema: Any,
    checks: list[Any],
    examples: int,
    path_values: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, int]:
    """Run every operation of a schemathesis ``schema``, positive and negative, once with
    generated path parameters and once with ``path_values`` (seeded objects), each with
    ``examples`` derandomized examples, validating every answer with ``checks``.

    Returns:
        (operation runs, calls made).
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    ran, calls = 0, [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        names = [p.name for p in operation.path_parameters]
        variants = [None] + ([{n: path_values[n] for n in names}] if names else [])
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            for path in variants:
                strategy = operation.as_strategy(generation_mode=mode, headers=headers, path_parameters=path)

                @settings(
                    max_examples=examples,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=strategy)
                def check(case: Any) -> None:
                    # The headers again at call time: schemathesis then knows the credentials
                    # are the caller's, not generated (a case with generated header parameters,
                    # such as Idempotency-Key, otherwise loses that and a 2xx reads as "auth ignored").
                    case.call_and_validate(checks=checks, headers=headers)
                    calls[0] += 1

                try:
                    check()
                except Unsatisfiable:
                    # Nothing to negate (no parameters, no body): nothing to run in this mode.
                    assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
                    continue
                ran += 1
    return ran, calls[0]
