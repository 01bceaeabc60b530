"""FIDO-style back-off for failed verifications, per subject and per device.

A few failures are free; after that each further failure locks the key out for a delay
that starts at ``base_s`` and doubles, up to ``max_s``. A success resets the count. This
bounds how fast anyone can try keys or hill-climb a template through the API.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class BackoffPolicy:
    free_failures: int = 5
    base_s: float = 30.0
    max_s: float = 3600.0


class Backoff:
    """Track failures per key; thread-safe; the clock is injectable for tests."""

    def __init__(self, policy: BackoffPolicy | None = None, clock=time.monotonic) -> None:
        self.policy = policy or BackoffPolicy()
        self.clock = clock
        self._state: dict[str, tuple[int, float]] = {}  # key -> (failures, locked until)
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Return the seconds until ``key`` may try again (0 when it may now)."""
        with self._lock:
            _, until = self._state.get(key, (0, 0.0))
        return max(0.0, until - self.clock())

    def failure(self, key: str) -> None:
        p = self.policy
        with self._lock:
            count, _ = self._state.get(key, (0, 0.0))
            count += 1
            over = count - p.free_failures
            delay = 0.0 if over <= 0 else min(p.max_s, p.base_s * 2 ** (over - 1))
            self._state[key] = (count, self.clock() + delay)

    def success(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)
