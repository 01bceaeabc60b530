"""Guess budgets: leaky buckets per device, token, subject and (subject, device) pair.

Every Verify and Identify is refused (RESOURCE_EXHAUSTED) while any budget it draws on is
full; each miss (no match) adds one unit to all of them, and units leak away at a steady
rate. So misses are bounded by the burst plus the rate, however many matches an attacker
interleaves: a success never wipes out earlier misses. The state lives in the store, so a
restart does not reset it and replicas on one PostgreSQL share it.

Lock-out of an owner by a third party: the tight per-subject budget is kept per (subject,
device) pair, so a stranger's misses on alice only lock out the stranger's device. A
looser subject-wide budget bounds guessing spread over many devices; a device that has
matched the subject before is exempt from it, so the owner's own door is never locked
out by others, and a new device waits at most 3600 / per_hour seconds at a time. In the
same way, a device that has matched anyone under its token is exempt from the token-wide
budget (strangers sharing the token cannot spend its allowance; its own device budget
still holds it).

A match never gives misses back: the pair budget is not emptied by a match, so a device
whose face sits in a subject cannot interleave matches to guess more (issue 20: 50
evaluated misses instead of 5).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

_SEP = "\x1f"


@dataclass(frozen=True)
class Budget:
    burst: float  # misses allowed back to back
    per_hour: float  # misses regained per hour

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_hour <= 0:
            raise ValueError("a guess budget needs burst >= 1 and per_hour > 0")

    def level(self, row: tuple[float, float] | None, now: float) -> float:
        """Return a stored (level, at) after leaking until ``now``."""
        if row is None:
            return 0.0
        level, at = row
        return max(0.0, level - max(0.0, now - at) * self.per_hour / 3600.0)

    def wait(self, level: float) -> float:
        """Return the seconds until one more miss fits (0 when it fits now)."""
        return max(0.0, (level + 1 - self.burst) * 3600.0 / self.per_hour)


@dataclass(frozen=True)
class GuessBudgets:
    # A door camera sees many people, so it gets more misses than one subject does.
    device: Budget = field(default_factory=lambda: Budget(50, 360))
    token: Budget = field(default_factory=lambda: Budget(200, 1800))
    subject: Budget = field(default_factory=lambda: Budget(20, 60))  # all devices together
    pair: Budget = field(default_factory=lambda: Budget(5, 12))  # one subject from one device

    @classmethod
    def parse(cls, text: str) -> GuessBudgets:
        """Parse ``"device=50/360,pair=5/30"`` (burst/per hour); unnamed budgets keep defaults."""
        names = {f.name for f in fields(cls)}
        given: dict[str, Budget] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            burst, _, rate = value.partition("/")
            if name not in names:
                raise ValueError(
                    f"unknown guess budget {name!r}; known: {', '.join(sorted(names))}"
                )
            try:
                given[name] = Budget(float(burst), float(rate))
            except ValueError:
                raise ValueError(f"guess budget {part!r}: write NAME=BURST/PER_HOUR") from None
        return cls(**given)


class Exhausted(Exception):
    """A guess budget is empty: carries which one and the seconds until it has room."""

    def __init__(self, kind: str, wait_s: float) -> None:
        super().__init__(f"too many failed attempts ({kind}): retry in {math.ceil(wait_s)} s")
        self.kind, self.wait_s = kind, wait_s


@dataclass(frozen=True)
class Ticket:
    """The budgets one call draws on: {kind: key}, and the key marking a proven device."""

    taken: dict[str, str]
    proven_key: str | None
    marked: bool = True  # a match has nothing to write: the device is already marked
    token_proven_key: str | None = None


class GuessLimiter:
    """Check and charge guess budgets in the store; thread-safe through its transactions.

    A call is let in while every budget it draws on has room for one more miss, and its
    miss is charged when it is decided. Calls in flight together may all pass the check,
    so a burst can overshoot by the server's worker count; the overshoot is charged all
    the same and delays the next attempt, so the rate over time stays bounded. (Charging
    up front would refuse concurrent honest calls that end up matching.)
    """

    def __init__(self, store, budgets: GuessBudgets | None = None, clock=time.time) -> None:
        self.store, self.budgets, self.clock = store, budgets or GuessBudgets(), clock

    def take(self, device: str, token: str, subject: str | None = None) -> Ticket:
        """Return the budgets a call draws on, or raise Exhausted when one has no room."""
        keys = {"device": f"device{_SEP}{device}", "token": f"token{_SEP}{token}"}
        proven_key = None
        token_proven = f"tproven{_SEP}{token}{_SEP}{device}"
        if subject is not None:
            keys["pair"] = f"pair{_SEP}{subject}{_SEP}{device}"
            keys["subject"] = f"subject{_SEP}{subject}"
            proven_key = f"proven{_SEP}{subject}{_SEP}{device}"
        now = self.clock()

        # A read, not a transaction: calls are charged when decided (see the class).
        rows = self.store.budgets([*keys.values(), token_proven, *filter(None, [proven_key])])
        taken = dict(keys)
        if proven_key in rows:  # this device has matched the subject: exempt, see above
            del taken["subject"]
        if token_proven in rows:  # it has matched under this token: strangers cannot spend it
            del taken["token"]
        levels = {k: getattr(self.budgets, k).level(rows.get(key), now) for k, key in taken.items()}
        waits = {k: getattr(self.budgets, k).wait(v) for k, v in levels.items()}
        kind = max(waits, key=waits.get)
        if waits[kind] > 0:
            raise Exhausted(kind, waits[kind])
        marked = (proven_key is None or proven_key in rows) and token_proven in rows
        return Ticket(taken, proven_key, marked, token_proven)

    def settle(self, ticket: Ticket, matched: bool) -> None:
        """Charge a miss to every budget of the call; a match charges nothing.

        A match marks the device as one that has matched the subject (exempt from the
        subject-wide budget) and the token (exempt from the token-wide one), but gives
        nothing back: earlier misses stay charged to the device, token and pair.
        """
        if matched and ticket.marked:
            return  # the common case of an owner's match writes nothing
        now = self.clock()

        def run(rows: dict[str, tuple[float, float]]):
            if matched:
                marks = [ticket.proven_key, ticket.token_proven_key]
                return {k: (0.0, now) for k in marks if k}, None
            return {
                key: (getattr(self.budgets, kind).level(rows.get(key), now) + 1, now)
                for kind, key in ticket.taken.items()
            }, None

        self.store.update_budgets(list(ticket.taken.values()), run)
