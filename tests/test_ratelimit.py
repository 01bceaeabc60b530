"""Guess budgets: leaky buckets in the store, refilled by time, never reset by one success."""

from __future__ import annotations

import pytest

from auth_service.ratelimit import Budget, Exhausted, GuessBudgets, GuessLimiter
from auth_service.store_sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def limiter():
    store = SqliteStore(":memory:")
    budgets = GuessBudgets(
        device=Budget(10, 3600), token=Budget(100, 3600), subject=Budget(6, 360), pair=Budget(3, 60)
    )
    yield GuessLimiter(store, budgets, Clock())
    store.close()


def misses(limiter: GuessLimiter, subject: str | None, device: str = "d-1", n: int = 100) -> int:
    """Try ``n`` misses; return how many were let through before a budget ran dry."""
    for i in range(n):
        try:
            limiter.settle(limiter.take(device, "app", subject), matched=False)
        except Exhausted:
            return i
    return n


def test_a_pair_budget_refills_at_its_rate(limiter: GuessLimiter) -> None:
    assert misses(limiter, "s-1") == 3
    with pytest.raises(Exhausted) as exc:
        limiter.take("d-1", "app", "s-1")
    assert exc.value.kind == "pair" and exc.value.wait_s == pytest.approx(60)
    limiter.clock.t += 60  # one unit back per minute
    assert misses(limiter, "s-1") == 1
    assert misses(limiter, "s-2") == 3  # other subjects have their own pair budget


def test_successes_give_back_only_their_own_unit(limiter: GuessLimiter) -> None:
    tried = 0
    for _ in range(20):  # 3 misses, then 1 match, over and over
        try:
            for _ in range(3):
                limiter.settle(limiter.take("d-1", "app", None), matched=False)
                tried += 1
            limiter.settle(limiter.take("d-1", "app", None), matched=True)
        except Exhausted as exc:
            assert exc.kind == "device"
            break
    assert tried == 10  # the device budget, however many matches came in between


def test_a_refused_call_takes_nothing(limiter: GuessLimiter) -> None:
    assert misses(limiter, "s-1") == 3
    for _ in range(50):
        with pytest.raises(Exhausted):
            limiter.take("d-1", "app", "s-1")
    assert misses(limiter, None) == 7  # the 50 refusals did not drain the device budget


def test_a_device_that_matched_is_exempt_from_the_subject_wide_budget(
    limiter: GuessLimiter,
) -> None:
    limiter.settle(limiter.take("owner", "app", "alice"), matched=True)
    assert misses(limiter, "alice", "cam-1") == 3
    assert misses(limiter, "alice", "cam-2") == 3  # 6: alice's subject-wide budget is spent
    assert misses(limiter, "alice", "cam-3") == 0
    assert misses(limiter, "alice", "owner") == 3  # only its own pair budget applies


def test_calls_in_flight_together_reserve_no_more_than_the_burst(limiter: GuessLimiter) -> None:
    tickets, refused = [], 0
    for _ in range(8):  # 8 calls let in before any is decided
        try:
            tickets.append(limiter.take("d-1", "app", "s-1"))
        except Exhausted as exc:
            assert exc.kind == "pair"
            refused += 1
    assert (len(tickets), refused) == (3, 5)  # before: 8 let in against a pair burst of 3
    for t in tickets:
        limiter.settle(t, matched=False)
    with pytest.raises(Exhausted) as exc:
        limiter.take("d-1", "app", "s-1")
    assert exc.value.wait_s == pytest.approx(60)  # one unit back per minute, no overshoot


def test_a_match_gives_back_its_own_unit_and_never_an_earlier_miss(limiter: GuessLimiter) -> None:
    assert misses(limiter, "s-1", n=2) == 2
    for _ in range(50):  # sequential matches never add up
        limiter.settle(limiter.take("d-1", "app", "s-1"), matched=True)
    assert misses(limiter, "s-1") == 1  # the two misses are still charged
    in_flight = limiter.take("d-1", "app", None)
    limiter.settle(limiter.take("d-1", "app", None), matched=True)
    limiter.settle(in_flight, matched=False)
    assert misses(limiter, None) == 10 - 3 - 1  # a match refunds its own unit, not another's


def test_a_call_that_fails_after_take_stays_charged(limiter: GuessLimiter) -> None:
    for _ in range(3):
        limiter.take("d-1", "app", "s-1")  # never settled: an exception, a cancelled call
    with pytest.raises(Exhausted):
        limiter.take("d-1", "app", "s-1")


def test_a_ticket_is_settled_once(limiter: GuessLimiter) -> None:
    assert misses(limiter, "s-1", n=2) == 2
    ticket = limiter.take("d-1", "app", "s-1")
    limiter.settle(ticket, matched=True)
    with pytest.raises(RuntimeError):
        limiter.settle(ticket, matched=True)  # a second refund would give back a miss
    assert misses(limiter, "s-1") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", GuessBudgets()),
        ("device=80/720, pair=3/10", GuessBudgets(device=Budget(80, 720), pair=Budget(3, 10))),
    ],
)
def test_budgets_parse(text: str, expected: GuessBudgets) -> None:
    assert GuessBudgets.parse(text) == expected


@pytest.mark.parametrize("text", ["devices=5/5", "device=5", "device=0/10", "pair=3/0"])
def test_bad_budgets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        GuessBudgets.parse(text)
