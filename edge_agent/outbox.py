"""The edge's durable outbox: writes (enroll, rekey, revoke) wait here, in order, until sent.

Every write goes through the outbox, so a write for a subject can never overtake an older
one still waiting. Each row keeps its request with its idempotency key: sending a row
again after a lost reply or a crash is applied once by the service (which keeps the
write and its reply in one transaction). A row leaves the queue when the service answered
it, or, refused for good, stays in the file marked refused for an operator to look at.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf.message import Message

from kfaar_pb.v1 import auth_pb2

log = logging.getLogger(__name__)

QUEUEABLE = {"Enroll": auth_pb2.EnrollRequest, "Rekey": auth_pb2.RekeyRequest,
             "Revoke": auth_pb2.RevokeRequest}  # fmt: skip
# Answers that no retry can change: the row is set aside as refused. Any other failure
# (unreachable, overloaded, a token not yet valid, a server crash) keeps it queued.
REFUSED_FOR_GOOD = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}


class OutboxFull(RuntimeError):
    """The outbox holds its maximum; the edge refuses new writes rather than lose old ones."""


class Outbox:
    """Requests waiting for the service, in order, in SQLite (survives restarts)."""

    def __init__(self, path: Path | str, capacity: int = 10_000) -> None:
        self.path, self.capacity = Path(path), capacity
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a queued write survives a power cut
        self.db.execute("PRAGMA busy_timeout=5000")  # another kfaar process may be writing
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, method TEXT NOT NULL, "
            "request BLOB NOT NULL, created REAL NOT NULL, refused TEXT)"
        )
        self.lock = threading.Lock()

    def put(self, method: str, request: Message) -> int:
        """Queue a write behind all earlier ones; return its row id."""
        if method not in QUEUEABLE:
            raise ValueError(f"only {', '.join(QUEUEABLE)} are queued, not {method}")
        with self.lock:
            (n,) = self.db.execute("SELECT COUNT(*) FROM outbox WHERE refused IS NULL").fetchone()
            if n >= self.capacity:
                raise OutboxFull(f"outbox {self.path} holds {n} requests; deliver them first")
            cur = self.db.execute(
                "INSERT INTO outbox (method, request, created) VALUES (?, ?, ?)",
                (method, request.SerializeToString(), time.time()),
            )
            return int(cur.lastrowid)

    def pending(self, up_to: int | None = None) -> list[tuple[int, str, Message]]:
        """Return the queued rows in order (those up to row ``up_to`` if given)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, method, request FROM outbox WHERE refused IS NULL AND id <= ? "
                "ORDER BY id",
                (up_to if up_to is not None else 2**62,),
            ).fetchall()
        return [(i, m, QUEUEABLE[m].FromString(r)) for i, m, r in rows]

    def counts(self) -> tuple[int, int]:
        """Return (queued, refused) row counts."""
        with self.lock:
            queued, refused = self.db.execute(
                "SELECT COUNT(*) - COUNT(refused), COUNT(refused) FROM outbox"
            ).fetchone()
        return queued, refused

    def refused(self) -> list[tuple[int, str, str]]:
        """Return (row id, method, reason) of the writes the service refused for good."""
        with self.lock:
            return self.db.execute(
                "SELECT id, method, refused FROM outbox WHERE refused IS NOT NULL ORDER BY id"
            ).fetchall()

    def remove(self, row_id: int) -> None:
        with self.lock:
            self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def refuse(self, row_id: int, reason: str) -> None:
        """Keep a request the service refused for good, out of the queue, for an operator."""
        with self.lock:
            self.db.execute("UPDATE outbox SET refused = ? WHERE id = ?", (reason, row_id))

    def close(self) -> None:
        with self.lock:
            self.db.close()


class DeliveryThread(threading.Thread):
    """Deliver the outbox in the background: at once when woken, else with back-off."""

    def __init__(
        self,
        deliver: Callable[[], int],
        queued: Callable[[], int],
        first_delay_s: float,
        max_delay_s: float,
        idle_s: float = 30.0,
    ) -> None:
        super().__init__(name="outbox-delivery", daemon=True)
        self._deliver, self._queued = deliver, queued
        self.first_delay_s, self.max_delay_s, self.idle_s = first_delay_s, max_delay_s, idle_s
        self.wake, self._halt = threading.Event(), threading.Event()

    def run(self) -> None:
        delay = self.first_delay_s
        while not self._halt.is_set():
            self.wake.clear()  # a write queued from here on wakes the next wait
            try:
                sent = self._deliver()
                left = self._queued()
            except Exception:  # a broken outbox file must not kill the thread silently
                log.exception("outbox delivery failed")
                sent, left = 0, 1
            if left == 0:
                delay = self.first_delay_s
                wait = self.idle_s
            else:  # the service is down or busy: back off, but start over after progress
                delay = self.first_delay_s if sent else min(delay * 2, self.max_delay_s)
                wait = delay
            self.wake.wait(wait)

    def stop(self, timeout: float | None = None) -> None:
        self._halt.set()
        self.wake.set()
        self.join(timeout)
