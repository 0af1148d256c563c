"""Change the type of existing queues (classic <-> quorum) without losing a message.

RabbitMQ cannot change a queue's type (or any argument) in place: the queue must be
deleted and declared anew. ``migrate_queue`` does that for one queue name through a
temporary queue ``<name>.migrating``:

1. declare ``<name>.migrating`` (classic, durable: a quorum queue cannot be deleted
   "only if empty" before RabbitMQ 4);
2. unless ``<name>`` already has the target arguments: refuse while it has consumers
   (workers must be stopped), move every message to the temporary queue, delete
   ``<name>`` only if it is empty (``if_empty``: a producer that published meanwhile makes
   the delete fail, and the move runs again), then declare it with the target arguments;
3. move every message back and delete the temporary queue (again only if empty).

Going back from quorum to classic, the quorum queue cannot be deleted "only if empty":
it is deleted once a passive declare counts no message, so its producers must be stopped
for that direction (the tool cannot see a publish that lands between count and delete).

A move publishes a copy with publisher confirms (mandatory, same properties) and acks the
original only after the broker confirmed the copy, so a crash at any point leaves each
message in one of the two queues (or, at worst, in both: a duplicate, which the workers
already tolerate as a redelivery), never in neither. Running it again resumes: step 2
is skipped for a queue of the target type, and step 3 empties what a crash left behind.

Producers that publish while a queue is deleted get their publish returned (mandatory) and
answer 503 or retry, as they do when a broker is down; nothing they had confirmed is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from shiftflow.kernel.broker import QUORUM, amqp_url_with_defaults

log = logging.getLogger(__name__)

#: Suffix of the temporary queue that holds a queue's messages while it is re-declared.
TEMPORARY_SUFFIX = ".migrating"
#: Attempts at deleting a queue that producers keep refilling before giving up.
DELETE_ATTEMPTS = 20


class MigrationError(Exception):
    """A queue cannot be migrated now (it has consumers, or producers keep refilling it)."""


@dataclass
class QueueMigration:
    """What ``migrate_queue`` did to one queue."""

    name: str
    changed: bool
    moved_out: int
    moved_back: int


def _channel(connection: pika.BlockingConnection) -> BlockingChannel:
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def _declare(connection: pika.BlockingConnection, name: str, arguments: Mapping[str, Any]) -> bool:
    """Declare ``name`` with ``arguments``; False when it exists with other arguments."""
    channel = connection.channel()
    try:
        channel.queue_declare(name, durable=True, arguments=dict(arguments))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:  # PRECONDITION_FAILED: inequivalent arguments
            return False
        raise
    channel.close()
    return True


def _consumers(connection: pika.BlockingConnection, name: str) -> int:
    channel = connection.channel()
    try:
        frame = channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    channel.close()
    return int(frame.method.consumer_count)


def move_messages(channel: BlockingChannel, source: str, target: str) -> int:
    """Move every message of ``source`` to ``target`` (confirmed copy first, then the ack).

    Returns:
        How many messages were moved.
    """
    moved = 0
    while True:
        method, properties, body = channel.basic_get(source, auto_ack=False)
        if method is None:
            return moved
        # confirm_delivery: returns only once the broker confirmed; raises when the copy
        # was returned or refused, and the original then stays (unacked -> requeued).
        channel.basic_publish("", target, body, properties, mandatory=True)
        channel.basic_ack(method.delivery_tag)
        moved += 1


def migrate_queue(connection: pika.BlockingConnection, name: str, arguments: Mapping[str, Any]) -> QueueMigration:
    """Give queue ``name`` the ``arguments`` (e.g. another ``x-queue-type``), keeping its messages.

    Raises:
        MigrationError: it has consumers, or producers refilled it ``DELETE_ATTEMPTS`` times.
    """
    temporary = name + TEMPORARY_SUFFIX
    if not _declare(connection, temporary, {}):
        raise MigrationError(f"{temporary} exists with other arguments: delete it after moving its messages")
    moved_out = 0
    changed = False
    if not _declare(connection, name, arguments):
        consumers = _consumers(connection, name)
        if consumers:
            raise MigrationError(f"queue {name} has {consumers} consumers: stop the workers first")
        channel = _channel(connection)
        # The existing queue is of the other type when the target is quorum, and a quorum one
        # when the target is classic (a classic queue changing another argument is classic).
        source_is_quorum = arguments.get("x-queue-type") != QUORUM
        for _ in range(DELETE_ATTEMPTS):
            moved_out += move_messages(channel, name, temporary)
            try:
                if source_is_quorum:
                    if channel.queue_declare(name, passive=True).method.message_count:
                        continue
                    channel.queue_delete(name)
                else:
                    channel.queue_delete(name, if_empty=True)
                break
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 406:  # 406: not empty, a producer published meanwhile
                    raise
                channel = _channel(connection)
        else:
            raise MigrationError(f"queue {name} kept receiving messages: stop its producers and run again")
        if not _declare(connection, name, arguments):
            raise MigrationError(f"queue {name} was declared again by another process with its old arguments")
        changed = True
    channel = _channel(connection)
    moved_back = move_messages(channel, temporary, name)
    try:
        channel.queue_delete(temporary, if_empty=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        log.warning("%s received messages while it was emptied; run the migration again", temporary)
    else:
        channel.close()
    return QueueMigration(name, changed, moved_out, moved_back)


def migrate(
    urls: Iterable[str], declarations: Iterable[tuple[str, Mapping[str, Any]]]
) -> list[QueueMigration]:
    """Migrate each (name, arguments) in turn on the first broker address that answers."""
    connection = pika.BlockingConnection([pika.URLParameters(amqp_url_with_defaults(url)) for url in urls])
    try:
        return [migrate_queue(connection, name, arguments) for name, arguments in declarations]
    finally:
        if connection.is_open:
            connection.close()
