"""Fixtures for tests against real servers (docs/architecture.md#components and #testing).

Unit tests use none of these. A test that needs servers is marked ``integration`` or
``acceptance`` (tests under ``tests/integration`` and ``tests/acceptance`` are marked
automatically) and asks for the fixtures it needs; nothing here is autouse, so a unit
run never touches a server.

Isolation per test:

* ``pg_url``: a PostgreSQL database ``sf_t_<hex>`` copied from a migrated template.
* ``amqp_url``: a RabbitMQ vhost ``sf_t_<hex>`` of its own, user guest.
* ``mongo_db``: a database name of its own on the session's SecantusDB server.
* ``redis_url``: a Redis database number leased to this test, flushed before and after;
  ``redis_prefix``: a key prefix for code that takes one. Pub/sub channels are shared by
  all Redis databases (and by concurrent sessions): put ``redis_prefix`` in channel names.

Every server answers on loopback only. PostgreSQL is reached as role ``postgres`` with
trust authentication on 127.0.0.1 (``scripts/ensure-services.sh`` makes sure of it);
``SHIFTFLOW_TEST_PG_ADMIN_URL`` overrides the admin URL. ``SHIFTFLOW_TEST_MONGO_URL``
points the tests at a running MongoDB-wire server instead of starting SecantusDB.
The machinery behind the fixtures lives in ``tests/support/``, for tests that need
two of something (``temp_pg_database``, ``VhostAdmin.temp_vhost``, ``leased_redis_db``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `from tests.support.x import ...` under the bare `pytest` script too
    sys.path.insert(0, str(ROOT))

from tests.support.ownership import token  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    PG_ADMIN_URL,
    PgDatabaseSupply,
    check_pg,
    create_pg_template,
    drop_pg_database,
    reap_pg,
    with_database,
)
from tests.support.rabbitmq import AMQP_HOST, AMQP_PORT, VhostAdmin, check_rabbitmq  # noqa: E402
from tests.support.redis_db import REDIS_HOST, REDIS_PORT, check_redis, leased_redis_db  # noqa: E402
from tests.support.secantus import SecantusProcess  # noqa: E402

#: Fixtures that need servers; a test using one must be marked integration or acceptance.
SERVICE_FIXTURES = frozenset(
    {"services", "pg_template", "pg_supply", "pg_url", "amqp_url", "mongo_url", "mongo_admin", "mongo_db"}
    | {"redis_url", "redis_prefix", "real_env"}
)


# --------------------------------------------------------------------------- markers


#: Acceptance files that start many processes (a deployment of several machines on one):
#: run in the one group of heavy tests, never beside a fault scenario or each other.
HEAVY = frozenset({"acceptance/test_many_machines.py"})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by directory, so ``-m "not integration and not acceptance"`` is the unit run.

    Also put each test in a pytest-xdist group (used by ``--dist loadgroup``, as ``make
    test`` runs): a file's tests stay in one process, so module fixtures start once, and
    every test under ``tests/reliability`` shares one group: those kill processes, start
    servers of their own and time recoveries, and two of them at once on a two-core machine
    would measure each other rather than ShiftFlow. Acceptance tests that run a whole
    deployment's processes at once (``HEAVY``) join that group for the same reason: next to
    a fault scenario they would slow its recovery, and two of them would each take the cores.
    """
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            relative = Path(str(item.path)).resolve().relative_to(tests_dir)
            suite = relative.parts[0]
        except (ValueError, IndexError):
            continue
        if suite in ("integration", "acceptance"):
            item.add_marker(getattr(pytest.mark, suite))
        if config.pluginmanager.hasplugin("xdist"):
            group = "reliability" if suite == "reliability" or relative.as_posix() in HEAVY else relative.as_posix()
            item.add_marker(pytest.mark.xdist_group(group))


#: Fault-scenario rows reported by pytest-xdist workers (``tests/reliability/conftest.py``
#: attaches them to the scenario's report); printed once by the controlling process.
_SCENARIO_ROWS: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the scenario rows that workers send with their reports."""
    _SCENARIO_ROWS.extend(value for name, value in report.user_properties if name == "reliability_scenario")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the workers' fault-scenario rows as one table (a single-process run prints its
    own, from ``tests/reliability/conftest.py``)."""
    if not _SCENARIO_ROWS:
        return
    terminalreporter.section("reliability scenarios")
    terminalreporter.write_line(_SCENARIO_ROWS[0]["table"].splitlines()[0])
    for row in _SCENARIO_ROWS:
        terminalreporter.write_line(row["table"].splitlines()[1])
    for row in _SCENARIO_ROWS:
        for line in row["lines"]:
            terminalreporter.write_line(line)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse a test that asks for servers without saying so (unit tests must run without them)."""
    needs = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if needs and not (item.get_closest_marker("integration") or item.get_closest_marker("acceptance")):
        pytest.fail(
            f"{item.nodeid} uses {', '.join(sorted(needs))} but is not marked integration or acceptance; "
            "mark it or move it under tests/integration",
            pytrace=False,
        )


# --------------------------------------------------------------------------- session


@dataclass(frozen=True)
class Services:
    """What the ``services`` fixture checked or started."""

    pg_admin_url: str
    amqp_host: str
    amqp_port: int
    redis_host: str
    redis_port: int
    mongo_url: str
    vhosts: VhostAdmin


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """Admin URL of PostgreSQL: role ``postgres``, trust auth on 127.0.0.1 (env override
    ``SHIFTFLOW_TEST_PG_ADMIN_URL``)."""
    return os.environ.get("SHIFTFLOW_TEST_PG_ADMIN_URL") or PG_ADMIN_URL


@pytest.fixture(scope="session")
def services(pg_admin_url: str) -> Iterator[Services]:
    """Check that PostgreSQL, RabbitMQ and Redis answer; start SecantusDB for the session.

    Fails (never skips) when a server is unreachable, naming it.
    """
    problems = []
    checks = (
        ("PostgreSQL", lambda: check_pg(pg_admin_url)),
        ("RabbitMQ", check_rabbitmq),
        ("Redis", check_redis),
    )
    for name, check in checks:
        try:
            check()
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {str(exc).strip()[:300]}")
    if problems:
        hint = (
            "CI must provide them: .ci/run calls `make test`, which runs scripts/ensure-services.sh first."
            if os.environ.get("CI")
            else "Run `make services` (scripts/ensure-services.sh) to start or install them, then retry."
        )
        pytest.fail(
            "required services are unreachable:\n  " + "\n  ".join(problems) + "\n" + hint, pytrace=False
        )
    vhosts = VhostAdmin()
    for reap in (lambda: reap_pg(pg_admin_url), vhosts.reap):
        with contextlib.suppress(Exception):  # reaping leftovers of killed sessions is a courtesy
            reap()
    mongo: SecantusProcess | None = None
    mongo_url = os.environ.get("SHIFTFLOW_TEST_MONGO_URL", "")
    if not mongo_url:
        mongo = SecantusProcess()
        try:
            mongo_url = mongo.start()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    try:
        yield Services(pg_admin_url, AMQP_HOST, AMQP_PORT, REDIS_HOST, REDIS_PORT, mongo_url, vhosts)
    finally:
        if mongo is not None:
            mongo.stop()


# --------------------------------------------------------------------------- per test


@pytest.fixture(scope="session")
def pg_template(services: Services, pg_admin_url: str) -> Iterator[str]:
    """Name of the session's migrated template database ``sf_tpl_<hex>`` (no connections allowed)."""
    name = create_pg_template(pg_admin_url)
    try:
        yield name
    finally:
        drop_pg_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def pg_supply(pg_template: str, pg_admin_url: str) -> Iterator[PgDatabaseSupply]:
    """Makes the per-test databases, one ahead of need (copying the template takes ~0.4 s)."""
    supply = PgDatabaseSupply(pg_admin_url, pg_template)
    try:
        yield supply
    finally:
        supply.close()


@pytest.fixture
def pg_url(pg_supply: PgDatabaseSupply, pg_admin_url: str) -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:5432/sf_t_<hex>``: a fresh copy of the template, dropped after."""
    name = pg_supply.take()
    try:
        yield with_database(pg_admin_url, name)
    finally:
        pg_supply.give_back(name)


@pytest.fixture
def pg_bound(pg_url: str) -> Iterator[None]:
    """The models bound to this test's database (``pg_url``), inside one connection."""
    from shiftflow.kernel.db import bind_database

    database = bind_database(pg_url)
    with database.connection_context():
        yield
    close_all = getattr(database, "close_all", None)
    if close_all is not None:
        close_all()


@pytest.fixture
def amqp_url(services: Services) -> Iterator[str]:
    """``amqp://guest:guest@127.0.0.1:5672/sf_t_<hex>``: a vhost of this test, deleted after."""
    with services.vhosts.temp_vhost() as url:
        yield url


@pytest.fixture(scope="session")
def mongo_url(services: Services) -> str:
    """URL of the session's MongoDB-wire server (SecantusDB), with ``retryWrites=false``."""
    return services.mongo_url


@pytest.fixture(scope="session")
def mongo_admin(mongo_url: str) -> Iterator[Any]:
    """A session-wide ``pymongo.MongoClient`` on ``mongo_url``, for checks and clean-up."""
    import pymongo

    client: Any = pymongo.MongoClient(mongo_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_db(mongo_admin: Any) -> Iterator[str]:
    """A database name ``sf_t_<hex>`` of this test on ``mongo_url``, dropped after."""
    name = f"sf_t_{token()}"
    try:
        yield name
    finally:
        mongo_admin.drop_database(name)


@pytest.fixture
def redis_url(services: Services) -> Iterator[str]:
    """``redis://127.0.0.1:6379/<n>``: a database leased to this test, flushed before and after."""
    with leased_redis_db() as url:
        yield url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix ``sf_t_<hex>:`` in ``redis_url``'s database; its keys are deleted after."""
    import redis

    prefix = f"sf_t_{token()}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def real_env(pg_url: str, amqp_url: str, mongo_url: str, mongo_db: str, redis_url: str) -> dict[str, str]:
    """SHIFTFLOW_* variables for production mode on this test's database, vhost and Redis db."""
    from shiftflow.kernel.settings import Settings

    env = {
        "SHIFTFLOW_MODE": "production",
        "SHIFTFLOW_AMQP_URL": amqp_url,
        "SHIFTFLOW_DATABASE_URL": pg_url,
        "SHIFTFLOW_MONGO_URL": mongo_url,
        "SHIFTFLOW_MONGO_DB": mongo_db,
        "SHIFTFLOW_REDIS_URL": redis_url,
        "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
        "SHIFTFLOW_METRICS_PORT": "0",
        "SHIFTFLOW_INGRESS_METRICS_PORT": "0",
        "SHIFTFLOW_SCHEDULER_METRICS_PORT": "0",
        # Stored secrets (connections, webhook signing secrets) are always encrypted.
        "SHIFTFLOW_SECRET_KEYS": "tests-secret-key-of-at-least-32-characters",
    }
    Settings.from_env(env)  # fail here, naming the variable, rather than inside a started process
    return env


@pytest.fixture
def json_service() -> Iterator[Any]:
    """A real loopback HTTP service that records requests (``tests.support.http_services.JsonService``)."""
    from tests.support.http_services import JsonService

    service = JsonService()
    yield service
    service.close()


@pytest.fixture
def sqlite_models() -> Iterator[Any]:
    """Every model bound to a fresh in-memory SQLite database (dev mode's engine), for unit tests."""
    from shiftflow.kernel.db import make_database
    from shiftflow.models.tables.registry import ALL_MODELS, create_all

    database = make_database("sqlite:///:memory:")
    create_all(database)
    with database.bind_ctx(ALL_MODELS, bind_refs=False, bind_backrefs=False):
        yield database
    database.close()
