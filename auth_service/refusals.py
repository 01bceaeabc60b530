"""Audit refusals without letting a flood grow the log: one row a second per caller.

Every refused call (interceptor, unary handler or stream probe) is audited, but a caller
(a verified device, or the peer address of an unauthenticated one) gets at most one row
per window. Refusals inside the window are counted, and the caller's next row carries the
count: ``count`` is the refusals since its previous row, this one included. Counts still
pending are written when the service stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_OUTCOME = 200  # refusal messages may quote caller-chosen ids: keep rows small
MAX_CALLERS = 10_000


def quoted(text: str, limit: int = 64) -> str:
    """Quote caller-chosen text for a refusal, cut short: it is echoed, logged and audited.

    Quoted whole, a megabyte-long id came back in the status details, past the client's
    metadata limit: the caller saw RESOURCE_EXHAUSTED instead of the reason.
    """
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def peer_ip(peer: str) -> str:
    """Return the address of a gRPC peer string, without the port ("ipv4:1.2.3.4:5")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[") or rest
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class RefusalAudit:
    """Write refusal rows through ``store.audit``, aggregated per caller and window."""

    def __init__(self, store, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.store, self.window_s, self.clock = store, window_s, clock
        self._seen: dict[str, list] = {}  # caller -> [window start, refusals not yet written]
        self._lock = threading.Lock()

    def record(
        self,
        caller: str,
        device: str | None,
        method: str,
        subject: str | None,
        outcome: str,
    ) -> bool:
        """Audit one refusal; return whether a row was written (else it was counted)."""
        now = self.clock()
        with self._lock:
            state = self._seen.get(caller)
            if state is not None and now - state[0] < self.window_s:
                state[1] += 1
                return False
            stale = self._drain() if len(self._seen) >= MAX_CALLERS else []
            pending = state[1] if state is not None else 0
            self._seen[caller] = [now, 0]
        for args in stale:
            self.store.audit(*args)
        self.store.audit(device, method, subject, outcome[:MAX_OUTCOME], count=1 + pending)
        return True

    def _drain(self) -> list[tuple]:
        """Forget every caller; return the rows their pending counts need (lock held)."""
        rows = [
            (None, "refusals", None, f"refused (repeats) from {caller}"[:MAX_OUTCOME], n)
            for caller, (_, n) in self._seen.items()
            if n
        ]
        self._seen.clear()
        return [(d, m, s, o, c) for d, m, s, o, c in rows]

    def flush(self) -> None:
        """Write every pending count (the service is stopping)."""
        with self._lock:
            rows = self._drain()
        for d, m, s, o, c in rows:
            self.store.audit(d, m, s, o, count=c)
