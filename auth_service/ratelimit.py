"""Guess budgets: leaky buckets per device, token, subject and (subject, device) pair.

Every Verify and Identify is refused (RESOURCE_EXHAUSTED) while any budget it draws on is
full; a call let in reserves one unit in all of them at once, a match gives back only its
own unit, and units leak away at a steady rate. So misses are bounded by the burst plus
the rate, however many matches an attacker interleaves and however many calls it has in
flight at once: a success never wipes out earlier misses. The state lives in the store, so a
restart does not reset it and replicas on one PostgreSQL share it.

Lock-out of an owner by a third party: the tight per-subject budget is kept per (subject,
device) pair, so a stranger's misses on alice only lock out the stranger's device. A
looser subject-wide budget bounds guessing spread over many devices; a device that has
matched the subject before is exempt from it, and so is every device calling under the
token of the subject's owner app (the app that enrolled it) while that token may Enroll
or Rekey: the owner's doors, new ones too, are never locked out by other apps' devices
(before, strangers kept alice's budget full and a new door of her owner app got "retry
in 60 s" on every try). That gives a thief holding such a device nothing it did not
have: ownership is per app, and the device may already add its own face to the subject
or rekey it. It keeps its pair, device and token budgets; the subject budget still
bounds every other app's devices, which wait at most 3600 / per_hour seconds at a time.
Identify names no subject in advance, so it draws on no subject budget. In the
same way, a device that has matched anyone under its token is exempt from the token-wide
budget (strangers sharing the token cannot spend its allowance; its own device budget
still holds it).

A match never gives earlier misses back: the pair budget is not emptied by a match, so a
device whose face sits in a subject cannot interleave matches to guess more (issue 20: 50
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


@dataclass
class Ticket:
    """The budgets one call reserved a unit in ({kind: key}) and the keys marking it proven."""

    taken: dict[str, str]
    proven_key: str | None
    marked: bool = True  # the device is already marked as proven: a match writes no mark
    token_proven_key: str | None = None
    settled: bool = False  # a ticket is settled once: a second refund would give back more


class GuessLimiter:
    """Reserve guess budgets in the store when a call is let in; settle them when decided.

    ``take`` checks that every budget a call draws on has room for one more miss and adds
    that miss to each, in one store transaction (on PostgreSQL under a lock on each budget
    key, so replicas queue there too): however many calls are in flight at once, on one
    replica or several, no more than a burst's worth get in. ``settle`` keeps the unit of
    a miss; a match gives back exactly its own unit, never an earlier miss's and never
    below empty. So each device holds at most (pair burst - its recent misses) calls on
    one subject in flight (5 by default; more are refused until one is decided), and
    sequential matches never add up.

    A call that fails between the two (a store error, an exception, a cancelled or timed
    out call, a refusal such as a subject of another model) is not settled and keeps its
    unit: it is charged as a miss. That is the safe side: a failure is never cheaper than
    a miss, so an attacker cannot guess for free by making calls fail after their probe
    was compared, and no refund depends on a store that may be what failed. The unit
    leaks away at the budget's rate like any other.
    """

    def __init__(self, store, budgets: GuessBudgets | None = None, clock=time.time) -> None:
        self.store, self.budgets, self.clock = store, budgets or GuessBudgets(), clock

    def take(
        self, device: str, token: str, subject: str | None = None, owner: bool = False
    ) -> Ticket:
        """Reserve one miss in every budget a call draws on, or raise Exhausted (no room).

        ``owner``: the caller's token is the subject's owner app's, exempt from the
        subject-wide budget (see the module docstring).
        """
        keys = {"device": f"device{_SEP}{device}", "token": f"token{_SEP}{token}"}
        proven_key = None
        token_proven = f"tproven{_SEP}{token}{_SEP}{device}"
        if subject is not None:
            keys["pair"] = f"pair{_SEP}{subject}{_SEP}{device}"
            keys["subject"] = f"subject{_SEP}{subject}"
            proven_key = f"proven{_SEP}{subject}{_SEP}{device}"
        marks = [token_proven, *filter(None, [proven_key])]
        now = self.clock()

        def reserve(rows: dict[str, tuple[float, float]]) -> tuple[dict, Ticket | Exhausted]:
            taken = dict(keys)
            if owner or proven_key in rows:  # owner app, or matched the subject: exempt
                taken.pop("subject", None)
            if token_proven in rows:  # it has matched under this token: strangers cannot spend it
                del taken["token"]
            levels = {
                k: getattr(self.budgets, k).level(rows.get(key), now) for k, key in taken.items()
            }
            waits = {k: getattr(self.budgets, k).wait(v) for k, v in levels.items()}
            kind = max(waits, key=waits.get)
            if waits[kind] > 0:
                return {}, Exhausted(kind, waits[kind])  # a refused call reserves nothing
            marked = all(m in rows for m in marks)
            writes = {key: (levels[k] + 1, now) for k, key in taken.items()}
            return writes, Ticket(taken, proven_key, marked, token_proven)

        # Check and reserve in one transaction: calls in flight at once cannot all pass.
        out = self.store.update_budgets([*keys.values(), *marks], reserve)
        if isinstance(out, Exhausted):
            raise out
        return out

    def settle(self, ticket: Ticket, matched: bool) -> None:
        """Keep a miss's reserved unit; give a match's own unit back and mark the device.

        A match marks the device as one that has matched the subject (exempt from the
        subject-wide budget) and the token (exempt from the token-wide one), and refunds
        only the unit its own ``take`` reserved: earlier misses stay charged to the
        device, token and pair.
        """
        if ticket.settled:
            raise RuntimeError("a guess ticket is settled once")
        ticket.settled = True
        if not matched:
            return  # the reservation is the miss's charge
        now = self.clock()

        def refund(rows: dict[str, tuple[float, float]]) -> tuple[dict, None]:
            writes = {
                key: (max(0.0, getattr(self.budgets, kind).level(rows.get(key), now) - 1), now)
                for kind, key in ticket.taken.items()
            }
            if not ticket.marked:
                marks = [ticket.proven_key, ticket.token_proven_key]
                writes.update({k: (0.0, now) for k in marks if k})
            return writes, None

        self.store.update_budgets(list(ticket.taken.values()), refund)
