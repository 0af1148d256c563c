"""Change the type of existing queues (classic <-> quorum) without losing a message.

RabbitMQ cannot change a queue's type (or any argument) in place: the queue must be
deleted and declared anew. Deleting a queue that something still publishes to can lose a
message *the broker has confirmed*: a publish routed to the queue while it is being
deleted is dropped with it, and RabbitMQ confirms a deleted queue's outstanding messages
instead of refusing them. So every process that publishes (ingress, API, scheduler,
poller, workers) must be stopped, and ``migrate`` checks it before it deletes anything.

For the queues that do not already have the target arguments (a queue that has them is
left alone, which makes a second run a no-op and lets a crashed run resume):

1. refuse if any has consumers (the workers must be stopped);
2. move each one's messages to a temporary classic queue ``<name>.migrating``;
3. watch every emptied queue for ``quiet_seconds``: a message arriving means a producer
   is still publishing, and the migration moves everything back and refuses, leaving
   the queues as they were;
4. delete each queue (a classic one only if empty; a quorum one, which RabbitMQ 3.x cannot
   delete "only if empty", once a passive declare counts no message), declare it with the
   target arguments, move its messages back and delete the temporary queue.

A move publishes a copy with publisher confirms (mandatory, same properties) and acks the
original only after the broker confirmed the copy, so a crash at any point leaves each
message in one of the two queues (or, at worst, in both: a duplicate, which the workers
already tolerate as a redelivery), never in neither. Running it again resumes: a queue of
the target type is not touched, and what a crash left in ``<name>.migrating`` moves back.

The quiet watch catches a producer that publishes steadily; one that publishes once in a
while could still hit the moment of the delete, which is why stopping the publishing
processes is the procedure and the watch only its check (docs/scaling.md). With no stop
at all, migrate through a new vhost instead.
"""

from __future__ import annotations

import logging
import time
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
#: Seconds the emptied queues must stay empty before any is deleted (no producer left).
QUIET_SECONDS = 2.0
QUIET_POLL_SECONDS = 0.05


class MigrationError(Exception):
    """A queue cannot be migrated now (it has consumers, or a producer still publishes to it)."""


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


def _message_count(channel: BlockingChannel, name: str) -> int:
    return int(channel.queue_declare(name, passive=True).method.message_count)


def _move_back_and_delete(connection: pika.BlockingConnection, name: str) -> int:
    """Move ``<name>.migrating`` back into ``name`` and delete it (only if empty)."""
    temporary = name + TEMPORARY_SUFFIX
    channel = _channel(connection)
    moved = move_messages(channel, temporary, name)
    try:
        channel.queue_delete(temporary, if_empty=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:
            raise
        log.warning("%s received messages while it was emptied; run the migration again", temporary)
    else:
        channel.close()
    return moved


def _delete(connection: pika.BlockingConnection, name: str, source_is_quorum: bool) -> int:
    """Delete the emptied queue ``name``; move out (and count) what arrived meanwhile."""
    channel = _channel(connection)
    moved = 0
    for _ in range(DELETE_ATTEMPTS):
        moved += move_messages(channel, name, name + TEMPORARY_SUFFIX)
        try:
            if source_is_quorum:
                if _message_count(channel, name):
                    continue
                channel.queue_delete(name)
            else:
                channel.queue_delete(name, if_empty=True)
            return moved
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:  # 406: not empty, a producer published meanwhile
                raise
            channel = _channel(connection)
    raise MigrationError(f"queue {name} kept receiving messages: stop its producers and run again")


def _watch_quiet(connection: pika.BlockingConnection, names: list[str], quiet_seconds: float) -> list[str]:
    """The queues among ``names`` that received a message within ``quiet_seconds``."""
    channel = connection.channel()
    deadline = time.monotonic() + quiet_seconds
    while True:
        busy = [name for name in names if _message_count(channel, name)]
        if busy or time.monotonic() >= deadline:
            channel.close()
            return busy
        time.sleep(min(QUIET_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def migrate_queues(
    connection: pika.BlockingConnection,
    declarations: Iterable[tuple[str, Mapping[str, Any]]],
    quiet_seconds: float = QUIET_SECONDS,
) -> list[QueueMigration]:
    """Give each queue its ``arguments`` (e.g. another ``x-queue-type``), keeping its messages.

    Raises:
        MigrationError: a queue has consumers, a producer still publishes to one (every
            queue is then left as it was, with its messages), or the temporary queue exists
            with other arguments.
    """
    declarations = list(declarations)
    changing: list[tuple[str, Mapping[str, Any]]] = []
    for name, arguments in declarations:
        if not _declare(connection, name + TEMPORARY_SUFFIX, {}):
            raise MigrationError(
                f"{name}{TEMPORARY_SUFFIX} exists with other arguments: delete it after moving its messages")
        if not _declare(connection, name, arguments):
            changing.append((name, arguments))
    for name, _ in changing:
        consumers = _consumers(connection, name)
        if consumers:
            raise MigrationError(f"queue {name} has {consumers} consumers: stop the workers first")
    moved_out = {name: 0 for name, _ in changing}
    channel = _channel(connection)
    for name, _ in changing:
        moved_out[name] += move_messages(channel, name, name + TEMPORARY_SUFFIX)
    busy = _watch_quiet(connection, [name for name, _ in changing], quiet_seconds) if changing else []
    if busy:
        for name, _ in changing:
            _move_back_and_delete(connection, name)
        raise MigrationError(
            f"a process is still publishing to {', '.join(busy)}: stop every ShiftFlow process "
            "(ingress, API, scheduler, poller, workers) and run again; nothing was changed")
    for name, arguments in changing:
        # The existing queue is of the other type when the target is quorum, and a quorum one
        # when the target is classic (a classic queue changing another argument is classic).
        moved_out[name] += _delete(connection, name, source_is_quorum=arguments.get("x-queue-type") != QUORUM)
        if not _declare(connection, name, arguments):
            raise MigrationError(f"queue {name} was declared again by another process with its old arguments")
    changed = {name for name, _ in changing}
    return [
        QueueMigration(name, name in changed, moved_out.get(name, 0), _move_back_and_delete(connection, name))
        for name, _ in declarations
    ]


def migrate(
    urls: Iterable[str],
    declarations: Iterable[tuple[str, Mapping[str, Any]]],
    quiet_seconds: float = QUIET_SECONDS,
) -> list[QueueMigration]:
    """Migrate the (name, arguments) declarations on the first broker address that answers."""
    connection = pika.BlockingConnection([pika.URLParameters(amqp_url_with_defaults(url)) for url in urls])
    try:
        return migrate_queues(connection, declarations, quiet_seconds)
    finally:
        if connection.is_open:
            connection.close()
