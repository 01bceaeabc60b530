"""The change log: every template write, in commit order, for each replica's index to follow.

Each write of a subject's templates (enroll, rekey, revoke) appends (seq, subject) in the
same transaction. ``seq`` comes from a one-row counter that the write updates, so the
row lock orders sequence numbers by commit: once seq N is visible, so is every write
before it, and a follower that has applied up to N never skips one that commits later
(an identity column would hand out numbers in start order, not commit order). A change
names only the subject; applying it means re-reading that subject's stored templates,
so applying one twice, or out of date, is harmless.

PostgreSQL also announces each change with NOTIFY (sent at commit), which wakes replicas
at once; the log is still polled, so a lost notification or a restart only delays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

CHANNEL = "kfaar_changes"
SQLITE_MIGRATION = """
    CREATE TABLE change_counter (seq INTEGER NOT NULL);
    INSERT INTO change_counter VALUES (0);
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY, subject_id TEXT NOT NULL, at REAL NOT NULL
    );
    CREATE INDEX changes_at ON changes (at);
"""
POSTGRES_MIGRATION = SQLITE_MIGRATION.replace("INTEGER", "BIGINT").replace(
    "REAL", "DOUBLE PRECISION"
)


class ChangeLog:
    """Mixin over ``SqlStore``: needs ``_read`` and ``_tx``."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable

    def _log_change(self, db: Any, subject: str) -> int:
        """Append a change of ``subject`` inside the caller's transaction; return its seq."""
        (seq,) = db.execute("UPDATE change_counter SET seq = seq + 1 RETURNING seq").fetchone()
        db.execute("INSERT INTO changes VALUES (?, ?, ?)", (seq, subject, time.time()))
        self._announce(db, seq)
        return int(seq)

    def _announce(self, db: Any, seq: int) -> None:
        """Tell other processes about a change (SQLite: nothing; they poll)."""

    def change_seq(self) -> int:
        """Return the sequence number of the last committed change."""
        with self._read() as db:
            return int(db.execute("SELECT seq FROM change_counter").fetchone()[0])

    def changes_since(self, seq: int, limit: int = 10_000) -> list[tuple[int, str, float]]:
        """Return up to ``limit`` changes (seq, subject, at) after ``seq``, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT seq, subject_id, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [(int(s), subject, float(at)) for s, subject, at in rows]

    def prune_changes(self, before: float) -> int:
        """Delete changes logged before ``before`` (a follower that far behind reloads)."""
        sql = "DELETE FROM changes WHERE at < ?"
        return int(self._tx(lambda db: db.execute(sql, (before,)).rowcount))

    def change_waiter(self) -> ChangeWaiter:
        """Return something that waits for announced changes (here: a plain poll interval)."""
        return ChangeWaiter()


class ChangeWaiter:
    """Wait for the next change; this one only sleeps, so followers poll the log."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; True when a change was announced (catch up now)."""
        self.closed.wait(timeout_s)
        return False

    def close(self) -> None:
        """Release what the waiter holds and end a wait in progress."""
        self.closed.set()
