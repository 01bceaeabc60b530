"""What one caller may hold of a replica: streams open at once, subjects, calls a second.

A stolen device with its app token acts inside its own scope, where authorization lets
it through; these limits keep it from taking the service's threads or storage from the
rest of the scope. Each StreamAuthenticate holds one of the server's worker threads for
as long as it stays open (the server is synchronous), so without a cap a few idle streams
froze every call of every device (docs/SECURITY.md, "Resource abuse from inside a scope").
A matching probe costs no guess budget, so without a call rate one device made 664 matched
Verifies a second, each an audit row: ``CallRate`` is a token bucket per verified device.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from auth_service.ratelimit import Budget

DEFAULT_WORKERS = 16
DEFAULT_STREAMS_PER_TOKEN = 4
DEFAULT_SUBJECTS_PER_APP = 10_000
# A door decides a few people a minute and a 1:N kiosk one or two a second; a visit's
# stream sends up to a few dozen probes at once. 5 a second, 60 at once, leaves them room
# and cuts a stolen device's flood of matches from 664 a second to 5 (docs/SECURITY.md).
DEFAULT_DEVICE_RATE = 5.0
DEFAULT_DEVICE_BURST = 60
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
    device_rate: float = DEFAULT_DEVICE_RATE  # calls a second one device is given back
    device_burst: int = DEFAULT_DEVICE_BURST  # calls one device may make at once

    def __post_init__(self) -> None:
        for name, flag in _FLAGS.items():
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, not {value}")
        if not (math.isfinite(self.device_rate) and self.device_rate > 0):
            raise ValueError(
                f"--device-rate: RATE must be a positive number, not {self.device_rate}"
            )
        if self.device_burst < 1:
            raise ValueError(f"--device-rate: BURST must be at least 1, not {self.device_burst}")

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


class CallRate:
    """A token bucket per device id: ``rate`` calls a second on average, ``burst`` at once.

    In memory, per replica: N replicas behind a balancer let a device make N times the
    rate. Only devices whose proof verified get a bucket, and a bucket that has filled up
    again is forgotten (a fresh one is the same): memory holds registered devices that
    called in the last two ``burst / rate`` periods, however many ids an attacker makes up.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        # The guess budgets' leaky bucket, leaking ``rate`` calls a second.
        self._budget = Budget(burst, rate * 3600.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (calls held, at)
        self._swept = clock()
        self._lock = threading.Lock()

    def take(self, device: str) -> float:
        """Spend one call of ``device``; return 0, or the seconds until it may call again."""
        with self._lock:  # the clock read inside: buckets never see time run backwards
            now = self.clock()
            if now - self._swept >= self.burst / self.rate:
                self._sweep(now)
            level = self._budget.level(self._buckets.get(device), now)
            if wait := self._budget.wait(level):  # refused: spends nothing, refills as before
                return wait
            self._buckets[device] = (level + 1, now)
            return 0.0

    def refusal(self, wait_s: float) -> str:
        """Say which limit refused a call and when to retry."""
        return (
            f"this device is over its call rate on this replica ({self.rate:g} calls a "
            f"second, {self.burst} at once; --device-rate): retry in {math.ceil(wait_s)} s"
        )

    def _sweep(self, now: float) -> None:
        """Forget the buckets that have leaked empty, as good as none (lock held)."""
        self._swept = now
        full = [d for d, row in self._buckets.items() if self._budget.level(row, now) == 0]
        for device in full:
            del self._buckets[device]

    def __len__(self) -> int:
        """Return how many devices hold a bucket now."""
        with self._lock:
            return len(self._buckets)


def parse_rate(text: str) -> tuple[float, int]:
    """Parse ``RATE,BURST`` (calls a second, calls at once); ValueError if malformed."""
    rate, sep, burst = text.partition(",")
    try:
        if not sep:
            raise ValueError
        return float(rate), int(burst)
    except ValueError:
        raise ValueError(
            f"--device-rate {text!r}: want RATE,BURST (calls a second, calls at once), e.g. 5,60"
        ) from None


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
    default_rate = f"{DEFAULT_DEVICE_RATE:g},{DEFAULT_DEVICE_BURST}"
    p.add_argument(
        "--device-rate",
        default=env("KFAAR_DEVICE_RATE", default_rate),
        metavar="RATE,BURST",
        help="calls one device may make on this replica: RATE a second on average, BURST at "
        "once (Verify, Identify, Enroll, Rekey, Revoke, each streamed probe); one more is "
        "refused RESOURCE_EXHAUSTED with when to retry; the admin token is not limited. Per "
        f"replica: N replicas allow N times it ($KFAAR_DEVICE_RATE; default {default_rate})",
    )


def limits_from_args(args: argparse.Namespace) -> tuple[int, ResourceLimits]:
    """Return the worker count and limits ``kfaar serve`` was given; ValueError if bad."""
    if args.workers < 2:
        raise ValueError("--workers must be at least 2 (streams may never hold them all)")
    rate, burst = parse_rate(args.device_rate)
    return args.workers, ResourceLimits(
        args.max_streams_per_token,
        None if args.max_streams is None else int(args.max_streams),
        args.max_subjects_per_app,
        rate,
        burst,
    )
