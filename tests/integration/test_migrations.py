"""Migrations and models agree, upgrades keep data, and concurrent upgrades are safe.

Self-contained: each test database is a throwaway ``sf_mig_*`` database created through
SHIFTFLOW_TEST_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
and dropped afterwards. An unreachable server fails the test; it is never skipped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import peewee
import psycopg2
import pytest

from shiftflow.kernel.db import make_database
from shiftflow.models.tables import migrations
from shiftflow.models.tables.migrations import MigrationError, introspect, scratch
from shiftflow.models.tables.price_cache import PriceCache
from shiftflow.models.tables.registry import ALL_MODELS, create_all

pytestmark = pytest.mark.integration

ADMIN_URL = os.environ.get("SHIFTFLOW_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

Factory = Callable[[], peewee.Database]


@pytest.fixture(scope="module")
def admin_url() -> str:
    try:
        psycopg2.connect(ADMIN_URL, connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        where = "in CI" if os.environ.get("CI") else "here"
        pytest.fail(
            f"PostgreSQL is unreachable {where} at {ADMIN_URL} ({exc}); start it or set SHIFTFLOW_TEST_PG_ADMIN_URL",
            pytrace=False,
        )
    return ADMIN_URL


def _factory(admin_url: str) -> Iterator[Factory]:
    made: list[tuple[str, peewee.Database]] = []

    def new_database() -> peewee.Database:
        name = scratch.create(admin_url)
        db = make_database(scratch.url_for(admin_url, name))
        made.append((name, db))
        return db

    yield new_database
    for name, db in made:
        db.close_all()
        scratch.drop(admin_url, name)


@pytest.fixture(scope="module")
def module_databases(admin_url: str) -> Iterator[Factory]:
    yield from _factory(admin_url)


@pytest.fixture
def fresh_database(admin_url: str) -> Iterator[Factory]:
    yield from _factory(admin_url)


@pytest.fixture(scope="module")
def migrated(module_databases: Factory) -> peewee.Database:
    """Database A: built only by the migrations."""
    db = module_databases()
    assert migrations.upgrade(db) == migrations.available()
    return db


@pytest.fixture(scope="module")
def modelled(module_databases: Factory) -> peewee.Database:
    """Database B: built only from the models (``create_tables`` with their constraints and indexes)."""
    db = module_databases()
    create_all(db)
    return db


@pytest.fixture(scope="module")
def models_schema(modelled: peewee.Database) -> introspect.Snapshot:
    return introspect.snapshot(modelled)


def _with_change(db: peewee.Database, statement: str) -> introspect.Snapshot:
    """The schema of ``db`` as it would be after ``statement``; rolled back afterwards."""
    with db.atomic() as txn:
        db.execute_sql(statement)
        snap = introspect.snapshot(db)
        txn.rollback()
    return snap


def test_migrations_build_exactly_the_models_schema(migrated, models_schema):
    # A vacuous comparison (empty snapshots) must not pass.
    assert len(models_schema["tables"]) == len(ALL_MODELS)
    assert len(models_schema["constraints"]) > 2 * len(ALL_MODELS)
    assert ("execution", "chk_execution_status_logic") in models_schema["constraints"]
    assert ("api_key", "idx_api_keys_hash") in models_schema["indexes"]
    differences = introspect.diff(models_schema, introspect.snapshot(migrated))
    assert not differences, "\n".join(map(str, differences))


@pytest.mark.parametrize(
    ("statement", "section", "key", "kind"),
    [
        ('ALTER TABLE "execution" DROP COLUMN "title"', "columns", ("execution", "title"), "missing"),
        ('ALTER TABLE "prompt" ADD COLUMN "extra" TEXT', "columns", ("prompt", "extra"), "unexpected"),
        (
            'ALTER TABLE "prompt" ALTER COLUMN "name" TYPE VARCHAR(100)',
            "columns",
            ("prompt", "name"),
            "changed",
        ),
        (
            'ALTER TABLE "workflow" ALTER COLUMN "folder" SET NOT NULL',
            "columns",
            ("workflow", "folder"),
            "changed",
        ),
        (
            'ALTER TABLE "workflow" ALTER COLUMN "tags" SET DEFAULT \'[]\'',
            "columns",
            ("workflow", "tags"),
            "changed",
        ),
        ('DROP INDEX "idx_api_keys_hash"', "indexes", ("api_key", "idx_api_keys_hash"), "missing"),
        (
            'DROP INDEX "idx_prompts_status_published"; CREATE INDEX "idx_prompts_status_published" '
            'ON "prompt" ("status", "published_at")',
            "indexes",
            ("prompt", "idx_prompts_status_published"),
            "changed",
        ),
        (
            'ALTER TABLE "llm_call" DROP CONSTRAINT "chk_llm_call_cost_positive"',
            "constraints",
            ("llm_call", "chk_llm_call_cost_positive"),
            "missing",
        ),
        ('CREATE TABLE "stray" ("id" INTEGER)', "tables", ("stray", ""), "unexpected"),
    ],
)
def test_comparison_reports_drift(migrated, models_schema, statement, section, key, kind):
    differences = introspect.diff(models_schema, _with_change(migrated, statement))
    assert [(d.section, (d.table, d.name), d.kind) for d in differences if d.section == section] == [
        (section, key, kind)
    ]


def test_a_model_field_without_a_migration_is_caught(migrated, fresh_database):
    class PriceCacheWithExtra(PriceCache):
        """PriceCache as if someone added a field and forgot the migration."""

        extra = peewee.CharField(null=True)

        class Meta:
            table_name = "price_cache"

    models = [PriceCacheWithExtra if m is PriceCache else m for m in ALL_MODELS]
    db = fresh_database()
    with db.bind_ctx(models, bind_refs=False, bind_backrefs=False):
        db.create_tables(models)
    differences = introspect.diff(introspect.snapshot(db), introspect.snapshot(migrated))
    assert [(d.section, d.table, d.name, d.kind) for d in differences] == [
        ("columns", "price_cache", "extra", "missing")
    ]


def test_upgrade_is_idempotent_and_leaves_nothing_pending(migrated):
    assert migrations.upgrade(migrated) == []
    assert migrations.pending(migrated) == []
    assert migrations.applied(migrated) == migrations.available()


def test_upgrade_from_an_older_schema_keeps_and_repairs_rows(fresh_database, models_schema):
    db = fresh_database()
    assert migrations.pending(db) == migrations.available()
    assert migrations.upgrade(db, target="0001") == ["0001_initial"]
    assert migrations.applied(db) == ["0001_initial"]
    # Rows as an older writer left them: a seed 000 status name, no completion time,
    # a published prompt without its publication date. 0002's checks would refuse them.
    db.execute_sql(
        """
        INSERT INTO workspace (id, created_at, updated_at, name, slug, plan, max_workflows, max_executions)
        VALUES ('00000000-0000-0000-0000-000000000001', now(), now(), 'Acme', 'acme', 'FREE', 5, 1000);
        INSERT INTO workflow (id, created_at, updated_at, workspace_id, name, status, trigger_type,
                              current_version, execution_count, successful_executions, failed_executions, tags)
        VALUES ('00000000-0000-0000-0000-000000000002', now(), now(), '00000000-0000-0000-0000-000000000001',
                'swap', 'ACTIVE', 'MANUAL', 1, 1, 1, 0, '[]');
        INSERT INTO execution (id, workflow_id, workflow_version, workspace_id, dedup_key, source, status, priority,
                               trigger_data, context, progress, retry_count, max_retries, created_at, started_at)
        VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000002', 1,
                '00000000-0000-0000-0000-000000000001', 'd1', 'manual', 'COMPLETED', 'NORMAL', '{"x": 1}', '{}',
                100, 0, 3, now() - interval '1 minute', now() - interval '1 minute');
        INSERT INTO prompt (id, created_at, updated_at, workspace_id, name, template, variables, version, status, tags)
        VALUES ('00000000-0000-0000-0000-000000000004', now(), now(), '00000000-0000-0000-0000-000000000001',
                'review', 'Review {{code}}', '[]', 1, 'PUBLISHED', '[]');
        """
    )
    assert migrations.upgrade(db) == migrations.available()[1:]
    assert migrations.pending(db) == []
    row = db.execute_sql(
        "SELECT status, completed_at IS NOT NULL, trigger_data::text FROM execution"
    ).fetchall()
    assert row == [("SUCCEEDED", True, '{"x": 1}')]
    assert db.execute_sql("SELECT published_at IS NOT NULL FROM prompt").fetchall() == [(True,)]
    differences = introspect.diff(models_schema, introspect.snapshot(db))
    assert not differences, "\n".join(map(str, differences))


def test_0007_places_existing_reruns_and_orders_in_their_lineage(fresh_database):
    db = fresh_database()
    migrations.upgrade(db, target="0006")
    ws, wf = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2"
    root, rerun, rerun2, other = (f"00000000-0000-0000-0000-0000000000e{n}" for n in range(1, 5))
    executions = [(root, None, "manual"), (rerun, root, "rerun"), (rerun2, rerun, "rerun"), (other, None, "manual")]
    db.execute_sql(
        f"""
        INSERT INTO workspace (id, created_at, updated_at, name, slug, plan, max_workflows, max_executions)
        VALUES ('{ws}', now(), now(), 'Acme', 'acme', 'FREE', 5, 1000);
        INSERT INTO workflow (id, created_at, updated_at, workspace_id, name, status, trigger_type,
                              current_version, execution_count, successful_executions, failed_executions, tags)
        VALUES ('{wf}', now(), now(), '{ws}', 'swap', 'ACTIVE', 'MANUAL', 1, 1, 0, 1, '[]');
        """
    )
    for n, (eid, parent, source) in enumerate(executions):
        db.execute_sql(
            "INSERT INTO execution (id, workflow_id, workflow_version, workspace_id, dedup_key, source, status, "
            "priority, trigger_data, context, progress, retry_count, max_retries, created_at, completed_at, parent_id) "
            "VALUES (%s, %s, 1, %s, %s, %s, 'FAILED', 'NORMAL', '{}', '{}', 0, 0, 3, now(), now(), %s)",
            (eid, wf, ws, f"k{n}", source, parent),
        )
    orders = [  # (execution, external id, state, shift id)
        (root, f"{root}:swap:0", "FAILED", None),
        (rerun, f"{rerun}:swap:0", "OPEN", "aa" * 10),
        (other, f"{other}:items:2/r2", "SETTLED", "bb" * 10),
        (None, "gone:swap:0", "FAILED", None),
    ]
    for n, (eid, ext, state, shift) in enumerate(orders):
        db.execute_sql(
            "INSERT INTO sideshift_order (id, created_at, updated_at, workspace_id, execution_id, step_id, "
            "external_id, state, shift_type, shift_id, deposit_coin, settle_coin, settle_address) "
            "VALUES (%s, now(), now(), %s, %s, %s, %s, %s, 'fixed', %s, 'eth', 'btc', 'bc1q')",
            (f"00000000-0000-0000-0000-0000000000f{n}", ws, eid, ext.split(":")[1], ext, state, shift),
        )
    assert migrations.upgrade(db) == migrations.available()[6:]
    lineage = dict(db.execute_sql("SELECT id::text, lineage_root::text FROM execution").fetchall())
    assert lineage == {root: None, rerun: root, rerun2: root, other: None}
    swaps = db.execute_sql(
        "SELECT o.external_id, s.root_execution::text, s.step_id, s.iteration FROM sideshift_order o "
        "LEFT JOIN sideshift_swap s ON s.id = o.swap_id ORDER BY o.external_id"
    ).fetchall()
    assert sorted(swaps) == sorted(
        [
            (f"{root}:swap:0", root, "swap", 0),
            (f"{rerun}:swap:0", root, "swap", 0),  # the re-run's order is its root's swap
            (f"{other}:items:2/r2", other, "items", 2),
            ("gone:swap:0", None, None, None),  # its execution is gone: no lineage to place it in
        ]
    )
    assert db.execute_sql("SELECT count(*) FROM sideshift_swap").fetchone() == (2,)


def test_concurrent_upgrades_apply_each_migration_once(fresh_database):
    first = fresh_database()
    second = make_database(scratch.url_for(ADMIN_URL, first.database))  # a second pool, as in another process
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run(db: peewee.Database) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrations.upgrade(db))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    second.close_all()
    assert not errors, errors
    assert sorted(results[0] + results[1]) == migrations.available()
    assert migrations.applied(first) == migrations.available()


def test_an_applied_migration_that_changed_is_refused(fresh_database):
    db = fresh_database()
    migrations.upgrade(db, target="0001_initial")
    db.execute_sql("UPDATE schema_migrations SET checksum = 'edited' WHERE name = '0001_initial'")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrations.upgrade(db)
    assert migrations.applied(db) == ["0001_initial"]


def test_unknown_target_is_refused(migrated):
    with pytest.raises(MigrationError, match="unknown migration target"):
        migrations.upgrade(migrated, target="9999_nope")
