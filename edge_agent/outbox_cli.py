"""``kfaar edge flush``: deliver the writes waiting in this device's outbox, then exit."""

from __future__ import annotations

import argparse
import sys

from edge_agent.cli_client import cli_client, cli_keystore


def add_flush_parser(actions: argparse._SubParsersAction) -> None:
    f = actions.add_parser(
        "flush",
        help="deliver the writes queued in the outbox while the service was down",
        description="Send the queued enroll, rekey and revoke writes in order, each exactly "
        "once, until the outbox is empty or --timeout passes. `kfaar edge run` also delivers "
        "them in the background while it runs. Exit 0 when nothing is left queued, 1 if some "
        "writes still wait.",
    )
    f.add_argument("--timeout", type=float, default=30.0,
                   help="give up after this many seconds (default 30)")  # fmt: skip
    f.set_defaults(handler=_flush)


def _flush(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise ValueError("--timeout must be a positive number of seconds")
    client = cli_client(args, cli_keystore(args))
    try:
        sent, left = client.flush(args.timeout)
        refused = client.outbox.refused()
    finally:
        client.close()
    sys.stdout.write(f"{sent} queued writes delivered, {left} still queued\n")
    for row_id, method, reason in refused:
        sys.stdout.write(f"refused for good, kept in {client.outbox.path}: #{row_id} {method}: "
                         f"{reason}\n")  # fmt: skip
    return 0 if left == 0 else 1
