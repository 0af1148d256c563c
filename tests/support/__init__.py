"""What the test suites share: the servers behind the fixtures, and waiting without sleeps.

One module per concept; import what you need from its module, e.g.
``from tests.support.waiting import wait_until``.

* ``ownership``: the mark (``OWNER``) on every database, vhost and lease a session makes,
  random name parts, and recognising leftovers of a killed session.
* ``ports``: ``free_port``, ``port_open``.
* ``waiting``: ``wait_until`` (poll a predicate), ``wait_for_http``.
* ``postgres``: the admin connection, migrated templates, ``temp_pg_database``,
  ``PgDatabaseSupply`` (a database made ahead per test).
* ``rabbitmq``: ``check_rabbitmq``, ``amqp_url_for``, ``VhostAdmin`` (``temp_vhost``).
* ``redis_db``: ``check_redis``, ``leased_redis_db`` (a database number leased per test).
* ``secantus``: ``SecantusProcess``, the MongoDB-wire server in a process of its own.
* ``http_services``: ``JsonService``, a loopback HTTP service that records requests.

The fixtures in ``tests/conftest.py`` are built from these; a test that needs two of
something uses them directly.
"""
