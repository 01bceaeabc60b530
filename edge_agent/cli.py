"""The ``kfaar`` command line: one entry point, one subcommand per job.

Each subcommand's module registers its own parser and imports its heavy dependencies only
when it runs, so ``kfaar --help`` works on an edge device without torch or dlib.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import grpc

# Errors a user can fix (bad path, bad file, bad value): a message and exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, LookupError)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    from auth_service.cli import register as register_serve
    from edge_agent.anonymize.cli import register as register_anonymize
    from edge_agent.demo import register as register_demo
    from edge_agent.edge_cli import register as register_edge
    from edge_agent.keys_cli import register as register_keys
    from training.calibrate import register as register_calibrate
    from training.evaluation.cli import register as register_eval
    from training.federated.cli import register as register_fl
    from training.hpvfg.cli import register as register_hpvfg
    from training.recognizer.cli import register as register_recognizer

    return [
        register_anonymize,
        register_calibrate,
        register_demo,
        register_edge,
        register_eval,
        register_fl,
        register_keys,
        register_hpvfg,
        register_recognizer,
        register_serve,
    ]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kfaar")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kfaar",
        description="Privacy-preserving face authentication with key-driven virtual faces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-vv for debug); default from $KFAAR_LOG_LEVEL",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``kfaar`` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = os.environ.get("KFAAR_LOG_LEVEL", "WARNING").upper()
    if args.verbose:
        level = "INFO" if args.verbose == 1 else "DEBUG"
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (CliError, *USER_ERRORS) as exc:
        sys.stderr.write(f"kfaar {args.command}: error: {exc}\n")
        return 2
    except grpc.RpcError as exc:  # the service refused, or cannot be reached
        sys.stderr.write(f"kfaar {args.command}: service: {exc.code().name}: {exc.details()}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
