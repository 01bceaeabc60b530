"""The embedded SQLite store: WAL mode, one locked connection, refusing to pretend.

It builds on ``auth_service.store``'s shared SQL store; nothing there imports it back.
A missing or empty file is refused unless the store is to be created, and a failed page
read marks the store faulty (auth_service/health.py turns NOT_SERVING) instead of raising
an unknown error on every call.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from auth_service.store import (
    MIGRATIONS,
    SqlStore,
    StoreCorrupt,
    StoreError,
    StoreMissing,
)


class SqliteStore(SqlStore):
    """SQLite in WAL mode; one connection guarded by a lock (the service is I/O-light)."""

    def __init__(self, path: Path | str, create: bool = True) -> None:
        """Open (and migrate) the file at ``path``.

        Without ``create``, a missing or empty (0-byte) file, or one that was never a kfaar
        store, raises StoreMissing instead of becoming a fresh, empty store: a deleted or
        truncated database must not come back as one that answers "unknown subject".
        """
        self.path = str(path)
        if self.path != ":memory:":
            if not create:
                _check_existing(Path(self.path))
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.lock = threading.RLock()  # re-entrant: a write joins the transaction of ``once``
        self._tx_depth = 0  # > 0 inside a transaction of the thread holding the lock
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            if not create and self.path != ":memory:" and self.schema_version == 0:
                self.db.close()
                raise StoreMissing(f"{self.path} is not a kfaar database: run `kfaar db init`")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreCorrupt(f"{self.path}: {exc}") from None

    def integrity_problems(self) -> list[str]:
        """Run SQLite's quick_check over every page; return what it reports (none: [])."""
        try:
            with self._read() as db:
                rows = db.execute("PRAGMA quick_check").fetchall()
        except StoreCorrupt as exc:
            return [str(exc)]
        found = [r[0] for r in rows if r[0] != "ok"]
        return found

    def make_durable(self) -> None:
        """Flush the WAL to disk: in WAL mode with synchronous=NORMAL a commit is not, yet."""
        if self.path == ":memory:":
            return
        with self.lock:
            for name in (self.path, f"{self.path}-wal"):
                try:
                    fd = os.open(name, os.O_RDONLY)
                except FileNotFoundError:  # no WAL right now: everything is in the file
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self.lock, self._faults():
            yield self.db

    @contextlib.contextmanager
    def _faults(self) -> Iterator[None]:
        """Turn a failed page read into StoreCorrupt, and mark the store unhealthy."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code not in _CORRUPTION and "malformed" not in str(exc):
                raise
            reason = f"{self.path}: {exc}"
            self.mark_faulty(reason)
            raise StoreCorrupt(reason) from exc

    def close(self) -> None:
        """Close the database file."""
        with self.lock:
            self.db.close()

    def _migrate(self) -> None:
        with self.lock:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this kfaar's "
                    f"{len(MIGRATIONS)}: run the newer kfaar"
                )
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self.db.executescript(f"BEGIN; {script} PRAGMA user_version = {i}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _tx(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        with self.lock, self._faults():
            if self._tx_depth:  # nested: join the enclosing transaction
                return fn(self.db)
            self.db.execute("BEGIN IMMEDIATE")
            self._tx_depth += 1
            try:
                out = fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            finally:
                self._tx_depth -= 1
            self.db.execute("COMMIT")
            return out


# SQLite's primary result codes for a damaged file: I/O error, corrupt page, not a database.
_CORRUPTION = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


def _check_existing(path: Path) -> None:
    """Raise StoreMissing unless ``path`` is a non-empty file."""
    if not path.exists():
        raise StoreMissing(
            f"no database at {path}: create it with `kfaar db init --db {path}` "
            "(or start with --create)"
        )
    if path.stat().st_size == 0:
        raise StoreMissing(
            f"{path} is an empty file, not a kfaar database: restore it from a backup, or "
            "remove it and run `kfaar db init`"
        )
