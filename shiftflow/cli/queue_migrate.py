"""``shiftflow queues migrate --to quorum|classic``: re-declare ShiftFlow's queues as another type.

A queue's type cannot change in place. This moves each queue's messages (and those of its
``.DQ`` and ``.XQ``) to a temporary quorum queue, deletes the queue, declares it with the
arguments of the target type and moves the messages back (``kernel.queue_migration``).
Stop the workers first (a queue with consumers is refused) and switch every process to
the same SHIFTFLOW_QUEUE_TYPE before starting them again; producers left running get
503s for the moment their queue is absent, which senders retry. Run it again after a
crash: it resumes, and no confirmed message is lost (docs/scaling.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from shiftflow.kernel.settings import Settings


def _migrate(args: argparse.Namespace) -> int:
    from shiftflow.kernel.broker import max_lengths
    from shiftflow.kernel.confirm_publisher import queue_declarations
    from shiftflow.kernel.contracts import Queue
    from shiftflow.kernel.queue_migration import MigrationError, migrate

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
        results = migrate(settings.amqp_urls, declarations)
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
    p.set_defaults(func=_migrate)
