"""What one caller may hold of a replica: streams open at once, subjects enrolled.

A stolen device with its app token acts inside its own scope, where authorization lets
it through; these limits keep it from taking the service's threads or storage from the
rest of the scope. Each StreamAuthenticate holds one of the server's worker threads for
as long as it stays open (the server is synchronous), so without a cap a few idle streams
froze every call of every device (docs/SECURITY.md, "Resource abuse from inside a scope").
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass

DEFAULT_WORKERS = 16
DEFAULT_STREAMS_PER_TOKEN = 4
DEFAULT_SUBJECTS_PER_APP = 10_000
_FLAGS = {
    "streams_per_token": "--max-streams-per-token",
    "streams": "--max-streams",
    "subjects_per_app": "--max-subjects-per-app",
}


@dataclass(frozen=True)
class ResourceLimits:
    """Per-caller limits; ``streams`` None: half the server's worker threads."""

    streams_per_token: int = DEFAULT_STREAMS_PER_TOKEN
    streams: int | None = None
    subjects_per_app: int = DEFAULT_SUBJECTS_PER_APP

    def __post_init__(self) -> None:
        for name, flag in _FLAGS.items():
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, not {value}")

    def total_streams(self, workers: int) -> int:
        """Return how many streams may be open at once: never every worker thread."""
        cap = self.streams if self.streams is not None else workers // 2
        return max(1, min(cap, workers - 1))


class StreamSlots:
    """Count open streams per token and in all; refuse one more beyond either cap."""

    def __init__(self, per_token: int, total: int) -> None:
        self.per_token, self.total = per_token, total
        self._open: dict[str, int] = {}
        self._all = 0
        self._lock = threading.Lock()

    def acquire(self, token: str | None) -> str | None:
        """Take a slot for a stream of ``token`` (None: the admin's); return why not, or None."""
        with self._lock:
            if self._all >= self.total:
                return (
                    f"this replica already serves {self._all} streams, its most at once "
                    "(--max-streams): retry later, or use unary calls"
                )
            held = self._open.get(token, 0) if token is not None else 0
            if token is not None and held >= self.per_token:
                return (
                    f"this app token already holds {held} open streams, the most one token "
                    "may (--max-streams-per-token): close one first"
                )
            self._all += 1
            if token is not None:
                self._open[token] = held + 1
            return None

    def release(self, token: str | None) -> None:
        """Give a stream's slot back (it ended, failed or was cancelled)."""
        with self._lock:
            self._all -= 1
            if token is not None:
                left = self._open.pop(token) - 1
                if left:
                    self._open[token] = left

    def open_streams(self) -> int:
        """Return how many streams hold a slot now."""
        with self._lock:
            return self._all


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """Add ``kfaar serve``'s resource limits, each with its environment variable."""
    env = os.environ.get
    p.add_argument(
        "--workers",
        type=int,
        default=env("KFAAR_WORKERS", str(DEFAULT_WORKERS)),
        help="worker threads serving calls; each open stream holds one ($KFAAR_WORKERS; "
        f"default {DEFAULT_WORKERS})",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=env("KFAAR_MAX_STREAMS"),
        help="StreamAuthenticate calls open at once on this replica, all tokens together; "
        "one more is refused (RESOURCE_EXHAUSTED) so unary calls keep their threads "
        "($KFAAR_MAX_STREAMS; default half of --workers, at most --workers minus 1)",
    )
    p.add_argument(
        "--max-streams-per-token",
        type=int,
        default=env("KFAAR_MAX_STREAMS_PER_TOKEN", str(DEFAULT_STREAMS_PER_TOKEN)),
        help="StreamAuthenticate calls one app token may hold open at once "
        f"($KFAAR_MAX_STREAMS_PER_TOKEN; default {DEFAULT_STREAMS_PER_TOKEN}); raise it for "
        "a token shared by many streaming cameras",
    )
    p.add_argument(
        "--max-subjects-per-app",
        type=int,
        default=env("KFAAR_MAX_SUBJECTS_PER_APP", str(DEFAULT_SUBJECTS_PER_APP)),
        help="subjects one app token may hold enrolled; an Enroll of one more is refused "
        "(RESOURCE_EXHAUSTED); the admin token is not limited ($KFAAR_MAX_SUBJECTS_PER_APP; "
        f"default {DEFAULT_SUBJECTS_PER_APP})",
    )


def limits_from_args(args: argparse.Namespace) -> tuple[int, ResourceLimits]:
    """Return the worker count and limits ``kfaar serve`` was given; ValueError if bad."""
    if args.workers < 2:
        raise ValueError("--workers must be at least 2 (streams may never hold them all)")
    return args.workers, ResourceLimits(
        args.max_streams_per_token,
        None if args.max_streams is None else int(args.max_streams),
        args.max_subjects_per_app,
    )
