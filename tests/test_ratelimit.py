"""FIDO-style back-off: free failures, then doubling lock-outs, reset by a success."""

from __future__ import annotations

from auth_service.ratelimit import Backoff, BackoffPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_backoff_doubles_after_the_free_failures_and_resets() -> None:
    clock = Clock()
    b = Backoff(BackoffPolicy(free_failures=3, base_s=30, max_s=100), clock)
    for _ in range(3):
        b.failure("subject:s-1")
        assert b.retry_after("subject:s-1") == 0
    delays = []
    for _ in range(4):
        b.failure("subject:s-1")
        delays.append(b.retry_after("subject:s-1"))
    assert delays == [30, 60, 100, 100]  # doubling, capped
    clock.t += 100
    assert b.retry_after("subject:s-1") == 0
    assert b.retry_after("device:d-1") == 0  # keys are independent
    b.success("subject:s-1")
    b.failure("subject:s-1")
    assert b.retry_after("subject:s-1") == 0
