"""``shiftflow queues migrate --to quorum|classic``: re-declare ShiftFlow's queues as another type.

A queue's type cannot change in place. This moves each queue's messages (and those of its
``.DQ`` and ``.XQ``) to a temporary queue, deletes the queue, declares it with the
arguments of the target type and moves the messages back (``kernel.queue_migration``).

Stop every ShiftFlow process first: the workers (a queue with consumers is refused) and
every process that publishes (ingress, API, scheduler, poller). RabbitMQ confirms a
message published to a queue at the moment it is deleted, and drops it, so a producer
left running could lose a trigger it was told was safe. The tool watches the emptied
queues for --quiet-seconds before deleting any: if a message arrives it puts everything
back, changes nothing and says which queue is still fed. Then start every process with
the same SHIFTFLOW_QUEUE_TYPE. Run it again after a crash: it resumes, and no confirmed
message is lost (docs/scaling.md). With no stop at all, migrate through a new vhost.
"""

from __future__ import annotations

import argparse
from typing import Any

from shiftflow.kernel.settings import Settings


def _migrate(args: argparse.Namespace) -> int:
    from shiftflow.kernel.broker import max_lengths
    from shiftflow.kernel.confirm_publisher import queue_declarations
    from shiftflow.kernel.contracts import Queue
    from shiftflow.kernel.queue_migration import QUIET_SECONDS, MigrationError, migrate

    settings = Settings.from_env()
    queues = args.queue or list(Queue.ALL)
    unknown = [q for q in queues if q not in Queue.ALL]
    if unknown:
        print(f"shiftflow queues migrate: unknown queue {', '.join(unknown)}; queues: {', '.join(Queue.ALL)}")
        return 2
    limits = max_lengths(settings)
    declarations = [
        item for queue in queues for item in queue_declarations(queue, limits.get(queue, 0), args.to)
    ]
    try:
        quiet = QUIET_SECONDS if args.quiet_seconds is None else args.quiet_seconds
        results = migrate(settings.amqp_urls, declarations, quiet)
    except MigrationError as exc:
        print(f"shiftflow queues migrate: {exc}")
        return 1
    for result in results:
        state = f"re-declared as {args.to}" if result.changed else f"already {args.to}"
        print(f"{result.name}: {state}, {result.moved_out} messages moved out, {result.moved_back} back")
    return 0


def add_to(actions: Any) -> None:
    """Add ``migrate`` to the ``queues`` command's actions."""
    p = actions.add_parser("migrate", help="re-declare the queues as quorum (or classic) queues, keeping messages",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, choices=("quorum", "classic"),
                   help="the queue type to give every queue (with its .DQ and .XQ)")
    p.add_argument("--queue", action="append",
                   help="only this queue (repeatable; default: every ShiftFlow queue)")
    p.add_argument("--quiet-seconds", type=float, metavar="S",
                   help="how long the emptied queues must stay empty before they are deleted, "
                        "proof that no producer is left (default 2)")
    p.set_defaults(func=_migrate)
