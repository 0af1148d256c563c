"""``shiftflow secrets rotate``: re-encrypt every stored secret under the newest key.

A key rotation: put the new key first in ``SHIFTFLOW_SECRET_KEYS`` (keeping the old one
after it) on every process, run ``shiftflow secrets rotate``, then remove the old key.
The same command moves ciphertexts of the key derivation of the first releases to the current
one. It exits 1 when some stored secret opens with none of the configured keys.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shiftflow.cli.operator import connect, guarded


def _rotate(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import secret_rotation

    connect(args)
    report = secret_rotation.rotate_all(dry_run=args.dry_run, progress=print)
    verb = "would re-encrypt" if args.dry_run else "re-encrypted"
    print(
        f"{verb} {report.connections} connection secret(s) and {report.webhooks} webhook secret(s); "
        f"{report.current} already under the newest key ({report.key_id})"
    )
    for name in report.unreadable:
        print(f"shiftflow: {name}: no configured key opens it (left as it is)", file=sys.stderr)
    if report.unreadable:
        print(f"{len(report.unreadable)} stored secret(s) could not be opened: keep the key that made them "
              "in SHIFTFLOW_SECRET_KEYS, or replace them")
        return 1
    return 0


def register(sub: Any) -> None:
    """Add ``secrets`` to the ``shiftflow`` parser."""
    secrets = sub.add_parser("secrets", help="manage the encryption of stored secrets")
    s_sub = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = s_sub.add_parser(
        "rotate",
        help="re-encrypt every connection and webhook secret under the newest key of SHIFTFLOW_SECRET_KEYS",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would be re-encrypted, write nothing")
    p.set_defaults(func=guarded(_rotate))
