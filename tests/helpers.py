"""Helpers shared by the test suites.

General: ``free_port``, ``port_open``, ``wait_until``, ``wait_for_http``.

Servers, behind the fixtures in ``tests/conftest.py`` and usable directly by a test that
needs more than one of something: ``create_pg_template``, ``temp_pg_database``,
``PgDatabaseSupply``, ``VhostAdmin`` (``temp_vhost``), ``leased_redis_db``,
``SecantusProcess``. Import them as ``from tests.helpers import ...``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

T = TypeVar("T")

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_HOST, AMQP_PORT, AMQP_USER, AMQP_PASSWORD = "127.0.0.1", 5672, "guest", "guest"
RABBIT_API = "http://127.0.0.1:15672/api"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Seconds a Redis database lease lasts: far above the per-test timeout, so leases of a
#: killed session free themselves soon.
REDIS_LEASE_TTL = 600
#: Written into every database comment, vhost description and lease this session makes,
#: so leftovers of a killed session can be recognised and reaped.
OWNER = f"shiftflow-test host={socket.gethostname()} pid={os.getpid()}"


def token() -> str:
    """A short random name part (12 hex digits)."""
    return secrets.token_hex(6)


# --------------------------------------------------------------------------- general


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago.

    The kernel picks it; another process may still take it before the caller binds,
    so servers started on it should be checked (and retried) by the caller.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Parameters:
        predicate: a function of no arguments; exceptions it raises count as "not yet"
            and the last one is chained to the timeout error.
        timeout: seconds before giving up.
        interval: seconds between calls.
        message: what was awaited, for the error message.

    Raises:
        TimeoutError: the predicate did not become truthy within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # any failure means "not ready yet"; kept for the report
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}") from last_error
        time.sleep(interval)


def wait_for_http(url: str, timeout: float = 10.0, status: int | None = None) -> int:
    """Wait until ``url`` answers an HTTP GET and return the status code.

    Parameters:
        url: the URL to poll (loopback servers started by the tests).
        timeout: seconds before giving up.
        status: when given, wait for exactly this status; otherwise any answer below 500.

    Raises:
        TimeoutError: no acceptable answer within ``timeout`` seconds.
    """

    def answered() -> int:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                code = int(response.status)
        except urllib.error.HTTPError as exc:
            code = int(exc.code)
            exc.close()
        ok = code == status if status is not None else code < 500
        return code if ok else 0

    return wait_until(answered, timeout=timeout, interval=0.1, message=f"HTTP answer from {url}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphan(mark: str | None) -> bool:
    """True for an ``OWNER`` mark of a test session on this host whose process is gone."""
    mark = mark or ""
    fields = dict(f.split("=", 1) for f in mark.split()[1:] if "=" in f)
    if not mark.startswith("shiftflow-test") or fields.get("host") != socket.gethostname():
        return False
    pid = fields.get("pid", "")
    return pid.isdigit() and not _pid_alive(int(pid))


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def pg_admin(admin_url: str) -> Iterator[Any]:
    """An autocommit psycopg2 connection with short timeouts, closed on exit."""
    import psycopg2

    conn = psycopg2.connect(admin_url, connect_timeout=5, options="-c statement_timeout=60000")
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def with_database(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(name)))


def check_pg(admin_url: str) -> None:
    """Raise unless PostgreSQL answers a query at ``admin_url``."""
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")


def reap_pg(admin_url: str) -> None:
    """Drop test databases (``sf_t_*``, ``sf_tpl_*``) left by killed sessions on this host."""
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname LIKE 'sf\\_t\\_%' OR datname LIKE 'sf\\_tpl\\_%'"
        )
        for name, comment in cur.fetchall():
            if is_orphan(comment):
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> list[str]:
    """Bring the database at ``url`` to the current schema (``shiftflow.models.tables.migrations.upgrade``).

    Returns the names of the migrations applied. Closes every connection it opened.
    """
    from shiftflow.kernel.db import make_database
    from shiftflow.models.tables.migrations import upgrade

    db = make_database(url)
    try:
        return list(upgrade(db))
    finally:
        # The pooled database keeps its connections unless told; a template must have none.
        close_all = getattr(db, "close_all", None)
        if close_all is not None:
            close_all()
        db.close()


def create_pg_template(admin_url: str) -> str:
    """Create and migrate a template database ``sf_tpl_<hex>``; return its name.

    The template refuses connections afterwards, because one stray connection makes
    ``CREATE DATABASE ... TEMPLATE`` fail. Drop it with ``drop_pg_database``.
    """
    name = f"sf_tpl_{token()}"
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
        cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
    try:
        migrate(with_database(admin_url, name))
        with pg_admin(admin_url) as conn, conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    except BaseException:
        drop_pg_database(admin_url, name)
        raise
    return name


def drop_pg_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, ending its connections (no error if it is gone)."""
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temp_pg_database(admin_url: str, template: str) -> Iterator[str]:
    """A fresh database ``sf_t_<hex>`` copied from ``template``; yields its URL, drops it on exit."""
    name = f"sf_t_{token()}"
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
    try:
        yield with_database(admin_url, name)
    finally:
        drop_pg_database(admin_url, name)


class PgDatabaseSupply:
    """Databases ``sf_t_<hex>`` copied from a template, one made ahead in a background thread.

    Copying the template costs 0.1 to 0.6 s here (fsync on, whatever the STRATEGY), so the
    next database is made while the current test runs and ``take`` returns at once; used
    ones are dropped in the same thread (``give_back``), so neither waits in the test.
    """

    def __init__(self, admin_url: str, template: str) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self.admin_url = admin_url
        self.template = template
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-pg-ahead")
        self._ahead: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def _create(self) -> str:
        name = f"sf_t_{token()}"
        with pg_admin(self.admin_url) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
        return name

    def take(self) -> str:
        """A new database's name; the caller drops it (``drop_pg_database``)."""
        ahead, self._ahead = self._ahead, None
        name = None
        if ahead is not None:
            try:
                name = ahead.result(timeout=120)
            except Exception:  # e.g. PostgreSQL was restarting: make one now instead
                name = None
        if name is None:
            name = self._create()
        self._ahead = self._executor.submit(self._create)
        return name

    def give_back(self, name: str) -> None:
        """Drop database ``name`` in the background (``close`` reports a failure)."""
        self._drops = [f for f in self._drops if not f.done() or f.exception() is not None]
        self._drops.append(self._executor.submit(drop_pg_database, self.admin_url, name))

    def close(self) -> None:
        """Drop the database made ahead, wait for the drops, stop the thread.

        Raises:
            Exception: the first failure of a background drop.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                self.give_back(ahead.result(timeout=120))
        self._executor.shutdown(wait=True)
        for drop in self._drops:
            drop.result()


# --------------------------------------------------------------------------- RabbitMQ


def check_rabbitmq() -> None:
    """Raise unless RabbitMQ accepts an AMQP connection as guest on the default vhost."""
    import pika

    credentials = pika.PlainCredentials(AMQP_USER, AMQP_PASSWORD)
    params = pika.ConnectionParameters(
        AMQP_HOST,
        AMQP_PORT,
        "/",
        credentials,
        connection_attempts=1,
        socket_timeout=3,
        blocked_connection_timeout=5,
    )
    pika.BlockingConnection(params).close()


def amqp_url_for(vhost: str) -> str:
    """The guest URL of ``vhost`` on the local broker."""
    return f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"


class VhostAdmin:
    """Creates and deletes vhosts through the management API, or ``rabbitmqctl`` without it.

    Measured here: the API takes about 30 ms per vhost; ``rabbitmqctl`` 1.2 s to create
    and 0.9 s to delete, because every call boots an Erlang VM.
    """

    def __init__(self) -> None:
        try:
            self.api = self._request("GET", "/overview", timeout=2.0)[0] == 200
        except OSError:
            self.api = False

    @staticmethod
    def _request(method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(RABBIT_API + path, data=data, method=method)
        auth = b64encode(f"{AMQP_USER}:{AMQP_PASSWORD}".encode()).decode()
        request.add_header("Authorization", "Basic " + auth)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return int(response.status), json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            exc.close()
            if method == "DELETE" and exc.code == 404:
                return 404, None
            raise

    @staticmethod
    def _ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)

    def create(self, name: str) -> None:
        """Create vhost ``name`` and give guest every permission on it."""
        if self.api:
            self._request("PUT", f"/vhosts/{quote(name, safe='')}", {"description": OWNER})
            perms = {"configure": ".*", "write": ".*", "read": ".*"}
            self._request("PUT", f"/permissions/{quote(name, safe='')}/{AMQP_USER}", perms)
        else:
            self._ctl("add_vhost", name)
            self._ctl("set_permissions", "-p", name, AMQP_USER, ".*", ".*", ".*")

    def delete(self, name: str) -> None:
        """Delete vhost ``name`` with its queues and exchanges (no error if it is gone)."""
        if self.api:
            self._request("DELETE", f"/vhosts/{quote(name, safe='')}")
        else:
            self._ctl("delete_vhost", name)

    def reap(self) -> None:
        """Delete ``sf_t_*`` vhosts left by killed sessions on this host (API only)."""
        if not self.api:
            return
        for vhost in self._request("GET", "/vhosts?columns=name,description")[1] or []:
            if vhost["name"].startswith("sf_t_") and is_orphan(vhost.get("description")):
                self.delete(vhost["name"])

    @contextlib.contextmanager
    def temp_vhost(self) -> Iterator[str]:
        """A vhost ``sf_t_<hex>`` of its own; yields its guest AMQP URL, deletes it on exit."""
        name = f"sf_t_{token()}"
        self.create(name)
        try:
            yield amqp_url_for(name)
        finally:
            self.delete(name)


# --------------------------------------------------------------------------- Redis


def check_redis() -> None:
    """Raise unless Redis answers PING."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    finally:
        client.close()


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@contextlib.contextmanager
def leased_redis_db(timeout: float = 30.0) -> Iterator[str]:
    """A Redis database number leased to the caller; yields its URL, flushed before and after.

    Leases are keys ``shiftflow-test:redis-db:<n>`` in database 0 (which tests never get),
    expiring after ``REDIS_LEASE_TTL`` seconds, so concurrent test sessions on one machine
    never share a database.
    """
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    owner = f"{OWNER} token={token()}"
    try:
        count = int(admin.config_get("databases").get("databases", 16))

        def lease() -> int | None:
            for n in range(1, count):
                if admin.set(f"shiftflow-test:redis-db:{n}", owner, nx=True, ex=REDIS_LEASE_TTL):
                    return n
            return None

        db = wait_until(lease, timeout=timeout, interval=0.2, message="a free Redis database (all leased)")
        leased = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)
        try:
            leased.flushdb()
            yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        finally:
            try:
                leased.flushdb()
            finally:
                leased.close()
                admin.eval(_RELEASE, 1, f"shiftflow-test:redis-db:{db}", owner)
    finally:
        admin.close()


# --------------------------------------------------------------------------- SecantusDB


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SecantusProcess:
    """A ``secantusd-py`` server in its own process, on a free loopback port, in a temp dir.

    A process rather than the in-process ``SecantusDBServer``: SecantusDB is the largest
    CPU user of a logging workflow (DESIGN.md 6) and must not share the test process's
    GIL, and a crash in its storage engine must not take pytest down with it. The child
    gets SIGTERM when pytest dies, so a killed session leaves no server behind.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sf-secantus-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The client URL; retryWrites=false, else SecantusDB slows 20x after ~15k writes."""
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false&serverSelectionTimeoutMS=10000"

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and return its URL once it answers ``ping``.

        Raises:
            RuntimeError: it did not answer within ``timeout`` seconds (three ports tried);
                the message ends with its log.
        """
        config = self.dir / "secantusd.toml"
        config.write_text("# empty: stops discovery of ./secantusd.toml and /etc/secantus\n")
        exe = Path(sys.executable).with_name("secantusd-py")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "secantus"]
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            args = ["--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
            args += ["--storage-path", str(self.dir / "data"), "--log-level", "WARNING"]
            with (self.dir / "secantusd.log").open("ab") as log:
                self.proc = subprocess.Popen(
                    [*command, *args],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_open("127.0.0.1", self.port, timeout=0.5) and self.ping():
                    return self.url
                time.sleep(0.05)
            self.stop(keep_dir=True)
        log_text = (self.dir / "secantusd.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"SecantusDB did not start within {timeout:g}s; its log ends:\n{log_text}")

    def ping(self) -> bool:
        """True when the server answers ``ping`` within 2 s."""
        import pymongo

        client: Any = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False
        finally:
            client.close()

    def stop(self, keep_dir: bool = False, graceful: bool = False) -> None:
        """Stop the server and remove its directory.

        Parameters:
            keep_dir: keep the storage directory (for a restart on the same data).
            graceful: SIGTERM and wait (SecantusDB's shutdown takes ~2 s) instead of SIGKILL,
                which is enough for data that is thrown away.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                if graceful or keep_dir:
                    self.proc.terminate()
                else:
                    self.proc.kill()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class JsonService:
    """A real HTTP service on loopback for tests: answers JSON, records every request.

    Every POST/GET is recorded in ``calls`` as ``{"method", "path", "body", "headers", "at"}``;
    the answer echoes the body as ``{"received": body, "got": body}``. ``script`` holds
    status codes for the next requests (then 200); ``delay`` slows every answer.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.delay = 0.0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                service.calls.append({"method": self.command, "path": self.path, "body": body,
                                      "headers": dict(self.headers), "at": time.time()})
                time.sleep(service.delay)
                status = service.script.pop(0) if service.script else 200
                out = json.dumps({"received": body, "got": body}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_POST = do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def bodies(self) -> list[Any]:
        """The request bodies, in arrival order."""
        return [call["body"] for call in self.calls]

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
