"""The service fixtures of tests/conftest.py work, and isolate tests from each other."""

from __future__ import annotations

import time
import uuid

import pika
import psycopg2
import pymongo
import pytest
import redis

from shiftflow.kernel.settings import Settings
from tests.support.postgres import temp_pg_database
from tests.support.rabbitmq import amqp_url_for
from tests.support.redis_db import leased_redis_db

pytestmark = pytest.mark.integration


def _query(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _tables(url: str) -> set[str]:
    rows = _query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {name for (name,) in rows}


def _database_exists(admin_url: str, name: str) -> bool:
    return bool(_query(admin_url, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_url_is_a_migrated_copy_of_the_template(pg_url, pg_template):
    from shiftflow.models.tables.migrations import available

    tables = _tables(pg_url)
    assert "schema_migrations" in tables
    assert [name for (name,) in _query(pg_url, "SELECT name FROM schema_migrations ORDER BY name")] == available()
    for table in ("workflow", "execution", "step_execution", "user", "workspace"):
        assert table in tables, f"{table} missing from {sorted(tables)}"
    assert _query(pg_url, "SELECT current_database()")[0][0].startswith("sf_t_")
    assert pg_template.startswith("sf_tpl_")


def test_pg_url_takes_a_row_and_gives_it_back(pg_url):
    _query(pg_url, "CREATE TABLE probe (id int PRIMARY KEY, body jsonb NOT NULL)")
    _query(pg_url, "INSERT INTO probe VALUES (%s, %s)", (1, '{"a": [1, 2]}'))
    assert _query(pg_url, "SELECT body FROM probe WHERE id = 1") == [({"a": [1, 2]},)]


def test_shiftflow_peewee_handle_works_on_pg_url(pg_url):
    from shiftflow.kernel.db import make_database

    db = make_database(pg_url)
    try:
        assert db.execute_sql("SELECT 41 + 1").fetchone() == (42,)
    finally:
        db.close_all()


def test_two_databases_are_isolated(pg_url, pg_admin_url, pg_template):
    with temp_pg_database(pg_admin_url, pg_template) as other:
        assert other != pg_url
        _query(pg_url, "CREATE TABLE only_here (id int)")
        _query(pg_url, "INSERT INTO only_here VALUES (1)")
        assert "only_here" in _tables(pg_url)
        assert "only_here" not in _tables(other)


def test_a_database_is_dropped_even_with_a_connection_open(pg_admin_url, pg_template):
    with temp_pg_database(pg_admin_url, pg_template) as url:
        name = url.rsplit("/", 1)[1]
        assert _database_exists(pg_admin_url, name)
        conn = psycopg2.connect(url)  # left open on purpose: the drop must not wait for it
    try:
        assert not _database_exists(pg_admin_url, name)
    finally:
        conn.close()


def test_the_template_refuses_connections(pg_admin_url, pg_template):
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + pg_template
    with pytest.raises(psycopg2.OperationalError, match="not currently accepting connections"):
        psycopg2.connect(url, connect_timeout=5).close()


# --------------------------------------------------------------------------- RabbitMQ


def test_amqp_url_publishes_with_confirms_and_consumes(amqp_url):
    assert amqp_url.startswith("amqp://guest:guest@127.0.0.1:5672/sf_t_")
    connection = pika.BlockingConnection(
        pika.URLParameters(amqp_url + "?connection_attempts=1&socket_timeout=5")
    )
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("probe", durable=True)
        body = uuid.uuid4().hex.encode()
        # With confirms on, basic_publish raises unless the broker confirms (and routes: mandatory).
        channel.basic_publish("", "probe", body, pika.BasicProperties(delivery_mode=2), mandatory=True)
        method, _props, got = channel.basic_get("probe", auto_ack=True)
        assert method is not None and got == body
    finally:
        connection.close()


def test_vhosts_are_isolated(amqp_url, services):
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_declare("private_to_one_vhost")
    finally:
        connection.close()
    with services.vhosts.temp_vhost() as other_url:
        other = pika.BlockingConnection(pika.URLParameters(other_url))
        try:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                other.channel().queue_declare("private_to_one_vhost", passive=True)
        finally:
            other.close()


def test_a_vhost_is_gone_after_its_test(services):
    with services.vhosts.temp_vhost() as url:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    params = pika.URLParameters(url + "?connection_attempts=1&socket_timeout=5")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params).close()
    assert amqp_url_for("x") == "amqp://guest:guest@127.0.0.1:5672/x"


# --------------------------------------------------------------------------- MongoDB wire


def test_mongo_insert_many_and_find(mongo_url, mongo_db):
    assert "retryWrites=false" in mongo_url
    client = pymongo.MongoClient(mongo_url)
    try:
        coll = client[mongo_db]["probe"]
        coll.insert_many([{"n": i, "tag": "x"} for i in range(50)])
        assert coll.count_documents({"tag": "x"}) == 50
        assert [d["n"] for d in coll.find({"n": {"$lt": 3}}).sort("n")] == [0, 1, 2]
    finally:
        client.close()


def test_mongo_db_names_differ_per_test_and_start_empty(mongo_db, mongo_admin):
    assert mongo_db.startswith("sf_t_")
    assert mongo_admin[mongo_db].list_collection_names() == []
    assert mongo_db not in mongo_admin.list_database_names()


# --------------------------------------------------------------------------- Redis


def test_redis_set_get_and_prefix(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert client.connection_pool.connection_kwargs["db"] != 0  # db 0 holds the leases
        assert client.dbsize() == 0
        client.set(redis_prefix + "k", "v")
        assert client.get(redis_prefix + "k") == b"v"
    finally:
        client.close()


def test_redis_databases_are_leased_one_per_holder(redis_url):
    with leased_redis_db() as other:
        assert other != redis_url
        a, b = redis.Redis.from_url(redis_url), redis.Redis.from_url(other)
        try:
            a.set("same", "a")
            b.set("keep", "b")
            assert b.get("same") is None
        finally:
            a.close()
            b.close()
    client = redis.Redis.from_url(other)
    try:
        assert client.dbsize() == 0  # flushed when the lease ended
    finally:
        client.close()


# --------------------------------------------------------------------------- together


def test_real_env_builds_production_settings(real_env):
    settings = Settings.from_env(real_env)
    assert settings.mode == "production" and not settings.dev
    assert settings.database_url.startswith("postgresql://postgres@127.0.0.1:5432/sf_t_")
    assert settings.amqp_url.startswith("amqp://") and settings.mongo_url.startswith("mongodb://")
    assert settings.redis_url.startswith("redis://127.0.0.1:6379/") and settings.metrics_port == 0
    assert settings.http_allow_private is True


@pytest.mark.parametrize("round_", range(3))
def test_per_test_setup_is_fast(round_, pg_template, pg_admin_url, services):
    """Guards the numbers the suite's speed depends on (measured ~0.1 s each; limits are loose)."""
    started = time.perf_counter()
    with temp_pg_database(pg_admin_url, pg_template):
        created = time.perf_counter()
    pg_seconds, pg_drop = created - started, time.perf_counter() - created
    started = time.perf_counter()
    with services.vhosts.temp_vhost():
        created = time.perf_counter()
    vhost_seconds, vhost_drop = created - started, time.perf_counter() - created
    print(
        f"pg create {pg_seconds:.3f}s drop {pg_drop:.3f}s; vhost create {vhost_seconds:.3f}s drop {vhost_drop:.3f}s"
    )
    assert pg_seconds < 5
    assert vhost_seconds < (1 if services.vhosts.api else 10)
