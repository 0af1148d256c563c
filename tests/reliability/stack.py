"""The fault suite's stack: its own four servers, and one tenant of them per scenario.

``Stack`` starts RabbitMQ, PostgreSQL, Redis and SecantusDB of its own (``services``)
once per module of scenarios, in a temporary directory, and stops them by PID after it.
``Stack.tenant`` gives a scenario a fresh PostgreSQL database (copied from a migrated
template), a RabbitMQ vhost, a MongoDB database name and a Redis database number, so
scenarios never see each other's rows, messages or logs. A scenario that leaves a
server down (it failed half-way) is healed by ``Stack.heal`` before the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.postgres import migrate, pg_admin, with_database

from .processes import SHIFTFLOW
from .services import Binaries, OwnPostgres, OwnRabbitMQ, OwnRedis, OwnSecantus, OwnServer, find_binaries

TEMPLATE = "sfrel_template"


@dataclass
class Tenant:
    """One scenario's share of the stack, and the environment of its ShiftFlow processes."""

    name: str
    pg_url: str
    amqp_url: str
    mongo_url: str
    mongo_db: str
    redis_url: str
    dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``shiftflow args`` with this tenant's environment (not checked)."""
        return subprocess.run([SHIFTFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def apply(self, definition: dict[str, Any], workspace: str = "rel") -> tuple[str, str]:
        """``shiftflow apply`` a webhook workflow (Standard Webhooks); return (token, secret).

        Raises:
            AssertionError: the command failed (with its output).
        """
        path = self.dir / f"{definition['name']}.json"
        path.write_text(json.dumps(definition))
        result = self.run("apply", str(path), "--workspace", workspace, "--webhook", "standard")
        assert result.returncode == 0, result.stdout + result.stderr
        secret = result.stdout.split("shown once): ")[1].split()[0]
        token = result.stdout.split("/hooks/")[1].split()[0]
        return token, secret


class Stack:
    """Four servers of the suite's own; ``start`` once, ``tenant`` per scenario, ``stop`` at the end."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="sfrel-"))
        self.binaries: Binaries = find_binaries()
        self.rabbitmq = OwnRabbitMQ(self.root / "rabbitmq", self.binaries)
        self.postgres = OwnPostgres(self.root / "postgres", self.binaries)
        self.redis = OwnRedis(self.root / "redis", self.binaries)
        self.mongo = OwnSecantus(self.root / "secantus", self.binaries)
        self._tenants = 0
        self.secret_key = secrets.token_urlsafe(36)

    @property
    def servers(self) -> list[OwnServer]:
        """Every server, RabbitMQ first (the slowest to boot)."""
        return [self.rabbitmq, self.postgres, self.redis, self.mongo]

    def start(self) -> None:
        """Start the four servers side by side, then migrate the template database."""
        for server in self.servers:
            server.spawn()
        for server in self.servers:
            server.wait_ready(120)
        with pg_admin(self.postgres.admin_url) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{TEMPLATE}"')
        migrate(with_database(self.postgres.admin_url, TEMPLATE))

    def heal(self) -> None:
        """Start any server a failed scenario left down (from the main thread)."""
        for server in self.servers:
            if not server.running():
                server.start(120)

    def tenant(self, name: str) -> Tenant:
        """A fresh database, vhost, Mongo database and Redis database for scenario ``name``."""
        self._tenants += 1
        label = f"sfrel_{self._tenants:02d}_{name}"
        with pg_admin(self.postgres.admin_url) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{label}" TEMPLATE "{TEMPLATE}"')
        directory = self.root / "tenants" / label
        directory.mkdir(parents=True)
        tenant = Tenant(
            name=name,
            pg_url=with_database(self.postgres.admin_url, label),
            amqp_url=self.rabbitmq.add_vhost(label),
            mongo_url=self.mongo.url,
            mongo_db=label,
            redis_url=self.redis.url(self._tenants % 64),
            dir=directory,
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTFLOW_", "PROMETHEUS_"))}
        tenant.env = {
            **base,
            "SHIFTFLOW_MODE": "production",
            "SHIFTFLOW_AMQP_URL": tenant.amqp_url,
            "SHIFTFLOW_DATABASE_URL": tenant.pg_url,
            "SHIFTFLOW_MONGO_URL": tenant.mongo_url,
            "SHIFTFLOW_MONGO_DB": tenant.mongo_db,
            "SHIFTFLOW_REDIS_URL": tenant.redis_url,
            "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
            # Seals the webhook's signing secret (required to create webhooks).
            "SHIFTFLOW_SECRET_KEYS": self.secret_key,
            "SHIFTFLOW_INGRESS_PORT": str(free_port()),
            "SHIFTFLOW_METRICS_PORT": str(free_port()),
            # Never the defaults: another test's processes may hold them.
            "SHIFTFLOW_INGRESS_METRICS_PORT": str(free_port()),
            "SHIFTFLOW_SCHEDULER_METRICS_PORT": str(free_port()),
            "SHIFTFLOW_METRICS_DIR": str(directory / "metrics"),
        }
        return tenant

    def stop(self) -> None:
        """Stop every server by its PID (RabbitMQ last: its shutdown is the slowest) and
        remove the directory."""
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        if not os.environ.get("SHIFTFLOW_RELIABILITY_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)
