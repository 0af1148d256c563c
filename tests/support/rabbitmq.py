"""RabbitMQ for tests: a vhost of its own per test, on the local broker as guest."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from tests.support.ownership import OWNER, is_orphan, token

AMQP_HOST, AMQP_PORT, AMQP_USER, AMQP_PASSWORD = "127.0.0.1", 5672, "guest", "guest"
RABBIT_API = "http://127.0.0.1:15672/api"


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



def queue_info(amqp_url: str, name: str) -> dict[str, Any]:
    """``name``'s type, arguments and message count on the vhost of ``amqp_url`` (a local
    broker's): from the management API when it runs, else from ``rabbitmqctl list_queues``."""
    from urllib.parse import unquote, urlsplit

    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"
    admin = VhostAdmin()
    if admin.api:
        queue = admin._request("GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")[1]
        return {"type": queue["type"], "arguments": dict(queue["arguments"]), "messages": queue.get("messages", 0)}
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "arguments", "messages",
         "--formatter", "json"],
        check=True, capture_output=True, timeout=60, text=True,
    )
    for queue in json.loads(listed.stdout):
        if queue["name"] == name:
            arguments = {key: value for key, _type, value in queue["arguments"]}
            return {"type": queue["type"], "arguments": arguments, "messages": queue["messages"]}
    raise KeyError(f"no queue {name} on vhost {vhost}")


def queue_names(amqp_url: str) -> list[str]:
    """The queue names on the vhost of ``amqp_url`` (``rabbitmqctl``: works without the API)."""
    from urllib.parse import unquote, urlsplit

    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--formatter", "json"],
                            check=True, capture_output=True, timeout=60, text=True)
    return [queue["name"] for queue in json.loads(listed.stdout)]
