"""The template store: one interface, embedded SQLite by default (WAL, migrations).

It keeps only what DESIGN.md section 3 allows: templates under pseudonymous subject ids,
tagged with model version and embedding space; device verify keys; hashed app tokens;
replies kept for idempotent retries; and an audit log without embeddings.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from auth_service import changelog, store_security
from auth_service.audit import AuditChain
from auth_service.changelog import ChangeLog
from auth_service.store_guard import SQLITE_MIGRATION, GuardStore
from auth_service.store_security import SecurityStore

log = logging.getLogger(__name__)

EMBED_DIM = 128

# Each entry upgrades the schema by one version; never edit a released entry.
MIGRATIONS = (
    """
    CREATE TABLE templates (
        id INTEGER PRIMARY KEY,
        subject_id TEXT NOT NULL,
        model TEXT NOT NULL,
        space INTEGER NOT NULL,
        vector BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX templates_gallery ON templates (model, space);
    CREATE INDEX templates_subject ON templates (subject_id);
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY, verify_key BLOB NOT NULL, created REAL NOT NULL
    );
    CREATE TABLE app_tokens (
        app_name TEXT PRIMARY KEY, token_hash BLOB NOT NULL, created REAL NOT NULL
    );
    CREATE TABLE replies (
        idempotency_key TEXT PRIMARY KEY, method TEXT NOT NULL, reply BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        device_id TEXT,
        method TEXT NOT NULL,
        subject_id TEXT,
        outcome TEXT NOT NULL
    );
    """,
    # 2: cached replies are bound to the device, the method and a hash of the request, and
    # expire; rows of the unbound table cannot be checked, so they are dropped.
    """
    DROP TABLE replies;
    CREATE TABLE replies (
        device_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        method TEXT NOT NULL,
        request_hash BLOB NOT NULL,
        reply BLOB NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (device_id, idempotency_key)
    );
    CREATE INDEX replies_created ON replies (created);
    """,
    # 3: device and token scopes, spent nonces and guess budgets (auth_service/store_guard.py).
    SQLITE_MIGRATION,
    # 4: the change log that replicas' indexes follow (auth_service/changelog.py).
    changelog.SQLITE_MIGRATION,
    # 5: subject owners, token binding, template tags, the audit chain (store_security.py).
    store_security.SQLITE_MIGRATION,
)

# Expired cached replies are deleted at most this often (seconds), by the next write.
PURGE_EVERY_S = 60.0


class StoreError(Exception):
    """A stored value is missing or inconsistent."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; the call may be retried."""


class StoreCorrupt(StoreUnavailable):
    """The database failed a page read or an integrity check: this replica stops serving."""


class StoreMissing(StoreError):
    """The database does not exist (or is an empty file) and was not to be created."""


class ReplyConflict(StoreError):
    """An idempotency key already names another request of the same device."""

    def __init__(self, method: str) -> None:
        super().__init__(f"idempotency key already used for a different {method} request")
        self.method = method


class NotOwner(StoreError):
    """A subject belongs to another app (None: to nobody, it predates ownership)."""

    def __init__(self, owner: str | None) -> None:
        super().__init__(f"the subject belongs to {owner!r}")
        self.owner = owner


class CapReached(StoreError):
    """A subject holds too many templates to take more."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the subject holds {held} templates")
        self.held = held


class _RacedInsert(Exception):
    """Another service process recorded the same key first; roll back and read its reply."""


@dataclass(frozen=True)
class Gallery:
    """All templates of one model version and space: ids (N,) and unit vectors (N, 128)."""

    subjects: list[str]
    vectors: np.ndarray


class TemplateStore(ABC):
    """What the service needs from storage; SQLite and PostgreSQL implement it."""

    @abstractmethod
    def enroll(self, subject: str, model: str, space: int, vectors: np.ndarray) -> int: ...

    @abstractmethod
    def replace(self, subject: str, model: str, space: int, vectors: np.ndarray) -> int: ...

    @abstractmethod
    def revoke(self, subject: str) -> int: ...

    @abstractmethod
    def subject_templates(self, subject: str) -> tuple[list[tuple[str, int]], np.ndarray]: ...

    @abstractmethod
    def gallery(self, model: str, space: int) -> Gallery: ...

    @abstractmethod
    def put_device(self, device_id: str, verify_key: bytes, scope: str = "default") -> None: ...

    @abstractmethod
    def device_key(self, device_id: str) -> bytes | None: ...

    @abstractmethod
    def remove_device(self, device_id: str) -> bool: ...

    @abstractmethod
    def put_token(
        self,
        app_name: str,
        token_hash: bytes,
        scope: str = "default",
        devices: tuple[str, ...] = (),
        methods: tuple[str, ...] = (),
    ) -> None: ...

    @abstractmethod
    def token_app(self, token_hash: bytes) -> str | None: ...

    @abstractmethod
    def remove_token(self, app_name: str) -> bool: ...

    @abstractmethod
    def once(
        self,
        device: str,
        key: str,
        method: str,
        request_hash: bytes,
        run: Callable[[], bytes],
        ttl_s: float,
        now: float | None = None,
    ) -> bytes: ...

    @abstractmethod
    def reply_method(self, device: str, key: str, ttl_s: float) -> str | None: ...

    @abstractmethod
    def audit(
        self,
        device_id: str | None,
        method: str,
        subject: str | None,
        outcome: str,
        count: int = 1,
    ) -> None: ...


def _vectors(blobs: list[bytes]) -> np.ndarray:
    """Decode stored float32 vectors into an (N, 128) array."""
    # One join and one decode: a million rows decode in a fraction of a second this way.
    return np.frombuffer(b"".join(blobs), np.float32).reshape(-1, EMBED_DIM).copy()


def _blob(vectors: np.ndarray) -> list[bytes]:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != EMBED_DIM:
        raise StoreError(f"expected (N, {EMBED_DIM}) vectors, got {v.shape}")
    return [row.tobytes() for row in v]


class SqlStore(AuditChain, SecurityStore, ChangeLog, GuardStore, TemplateStore):
    """The SQL both backends share; they supply ``_read``, ``_tx`` and migrations.

    Statements use ``?`` placeholders and only SQL that SQLite and PostgreSQL both accept
    (``INSERT ... ON CONFLICT`` rather than ``INSERT OR REPLACE``).
    """

    _purged_at = float("-inf")
    # Why this store must not serve (a failed integrity check or page read), else None.
    fault: str | None = None
    on_fault: Callable[[str], None] | None = None

    def mark_faulty(self, reason: str) -> None:
        """Record that the store failed; the server reports NOT_SERVING with ``reason``."""
        if self.fault is None:
            log.error("the template store is unhealthy: %s", reason)
        self.fault = self.fault or reason
        if self.on_fault is not None:
            self.on_fault(self.fault)

    def integrity_problems(self) -> list[str]:
        """Return what an integrity check finds wrong (nothing: an empty list)."""
        return []

    @abstractmethod
    def _tx(self, fn: Callable[[Any], object]) -> object:
        """Run ``fn(db)`` in one transaction: all of it or nothing (nested: joins it)."""

    @abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """Yield a connection to read with: inside a transaction, the transaction's own."""

    def _insert(
        self, db: sqlite3.Connection, subject: str, model: str, space: int, rows: list[bytes]
    ) -> int:
        now = time.time()
        key = self.service_key
        db.executemany(
            "INSERT INTO templates (subject_id, model, space, vector, created, tag) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (subject, model, space, r, now, key and key.tag(subject, model, space, r))
                for r in rows
            ],
        )
        self._log_change(db, subject)
        return len(rows)

    def enroll(self, subject: str, model: str, space: int, vectors: np.ndarray) -> int:
        rows = _blob(vectors)
        return self._tx(lambda db: self._insert(db, subject, model, space, rows))

    def enroll_owned(
        self,
        subject: str,
        owner: str,
        device: str,
        admin: bool,
        model: str,
        space: int,
        vectors: np.ndarray,
        cap: int,
    ) -> int:
        """Add templates as ``owner`` in one transaction: claim, ownership, cap, insert.

        A new subject is claimed for ``owner``; an existing one takes templates only from
        its owner (or ``admin``), and only up to ``cap`` in all. The subject is locked
        first, so replicas enrolling it at once cannot both pass the cap check.
        """
        rows = _blob(vectors)

        def run(db: Any) -> int:
            self._lock_subject(db, subject)
            found = db.execute(
                "SELECT app FROM subject_owners WHERE subject_id = ?", (subject,)
            ).fetchone()
            held = int(
                db.execute(
                    "SELECT COUNT(*) FROM templates WHERE subject_id = ?", (subject,)
                ).fetchone()[0]
            )
            if found is None and held == 0:
                db.execute(
                    "INSERT INTO subject_owners VALUES (?, ?, ?, ?)",
                    (subject, owner, device, time.time()),
                )
            elif not admin and (found is None or found[0] != owner):
                raise NotOwner(None if found is None else found[0])
            if held + len(rows) > cap:
                raise CapReached(held)
            return self._insert(db, subject, model, space, rows)

        return int(self._tx(run))

    def has_tagged_templates(self) -> bool:
        """Return whether any stored template carries an integrity tag."""
        with self._read() as db:
            return (
                db.execute("SELECT 1 FROM templates WHERE tag IS NOT NULL LIMIT 1").fetchone()
                is not None
            )

    def _lock_subject(self, db: Any, subject: str) -> None:
        """Serialize writers of one subject (SQLite: its write lock already does)."""

    def replace(self, subject: str, model: str, space: int, vectors: np.ndarray) -> int:
        """Swap all of a subject's templates in one transaction (rekey)."""
        rows = _blob(vectors)

        def run(db: sqlite3.Connection) -> int:
            if not db.execute(
                "SELECT 1 FROM templates WHERE subject_id = ?", (subject,)
            ).fetchone():
                raise StoreError(f"unknown subject {subject!r}")
            db.execute("DELETE FROM templates WHERE subject_id = ?", (subject,))
            return self._insert(db, subject, model, space, rows)

        return self._tx(run)

    def revoke(self, subject: str) -> int:
        def run(db: Any) -> int:
            n = db.execute("DELETE FROM templates WHERE subject_id = ?", (subject,)).rowcount
            if n:
                self._log_change(db, subject)
            return n

        return self._tx(run)

    def subject_templates(self, subject: str) -> tuple[list[tuple[str, int]], np.ndarray]:
        """Return each template's (model, space) and the vectors (N, 128) of one subject."""
        with self._read() as db:
            rows = db.execute(
                "SELECT model, space, vector, tag FROM templates WHERE subject_id = ? ORDER BY id",
                (subject,),
            ).fetchall()
        rows = self._tagged([(subject, *r) for r in rows])
        return [(m, s) for _, m, s, _ in rows], _vectors([v for *_, v in rows])

    def _tagged(self, rows: list[tuple]) -> list[tuple]:
        """Keep the (subject, model, space, vector[, tag]) rows whose tag is the service's.

        Without a service key nothing is checked. A row that fails is refused (as if it
        were absent) and logged: someone wrote the table without the key.
        """
        key = self.service_key
        if key is None:
            return [r[:4] for r in rows]
        good = [r[:4] for r in rows if key.check(r[4], r[0], r[1], r[2], bytes(r[3]))]
        if len(good) != len(rows):
            bad = sorted({r[0] for r in rows if not key.check(r[4], r[0], r[1], r[2], bytes(r[3]))})
            log.error(
                "refused %d stored templates without a valid integrity tag (subjects %s)",
                len(rows) - len(good),
                ", ".join(repr(s) for s in bad[:5]),
            )
        return good

    def gallery(self, model: str, space: int) -> Gallery:
        with self._read() as db:
            rows = db.execute(
                "SELECT subject_id, model, space, vector, tag FROM templates "
                "WHERE model = ? AND space = ? ORDER BY id",
                (model, space),
            ).fetchall()
        rows = self._tagged(rows)
        return Gallery([r[0] for r in rows], _vectors([r[3] for r in rows]))

    def put_device(self, device_id: str, verify_key: bytes, scope: str = "default") -> None:
        self._tx(
            lambda db: db.execute(
                "INSERT INTO devices (device_id, verify_key, created, scope) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET verify_key = excluded.verify_key, "
                "created = excluded.created, scope = excluded.scope",
                (device_id, verify_key, time.time(), scope),
            )
        )

    def device_key(self, device_id: str) -> bytes | None:
        with self._read() as db:
            row = db.execute(
                "SELECT verify_key FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def remove_device(self, device_id: str) -> bool:
        return bool(
            self._tx(
                lambda db: (
                    db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,)).rowcount
                )
            )
        )

    def put_token(
        self,
        app_name: str,
        token_hash: bytes,
        scope: str = "default",
        devices: tuple[str, ...] = (),
        methods: tuple[str, ...] = (),
        shared: bool = False,
    ) -> None:
        """Store a token's hash and grant: scope, devices, methods (empty: defaults), sharing."""
        sql = (
            "INSERT INTO app_tokens (app_name, token_hash, created, scope, devices, methods, "
            "shared) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app_name) DO UPDATE SET "
            "token_hash = excluded.token_hash, created = excluded.created, "
            "scope = excluded.scope, devices = excluded.devices, methods = excluded.methods, "
            "shared = excluded.shared"
        )
        row = (
            app_name,
            token_hash,
            time.time(),
            scope,
            "\n".join(devices),
            ",".join(methods),
            int(shared),
        )
        self._tx(lambda db: db.execute(sql, row))

    def token_app(self, token_hash: bytes) -> str | None:
        with self._read() as db:
            row = db.execute(
                "SELECT app_name FROM app_tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        return None if row is None else row[0]

    def remove_token(self, app_name: str) -> bool:
        sql = "DELETE FROM app_tokens WHERE app_name = ?"
        return bool(self._tx(lambda db: db.execute(sql, (app_name,)).rowcount))

    def once(
        self,
        device: str,
        key: str,
        method: str,
        request_hash: bytes,
        run: Callable[[], bytes],
        ttl_s: float,
        now: float | None = None,
    ) -> bytes:
        """Return the reply cached for this device's key, or run the write and cache its reply.

        The write ``run`` makes (through this store's methods, which join the transaction)
        and its cached reply commit together or not at all: a crash cannot apply it twice.
        A key that names another method or request raises ReplyConflict.
        """
        now = time.time() if now is None else now

        def tx(db: Any) -> bytes:
            if now - self._purged_at >= min(PURGE_EVERY_S, ttl_s):
                db.execute("DELETE FROM replies WHERE created < ?", (now - ttl_s,))
                self._purged_at = now
            row = db.execute(
                "SELECT method, request_hash, reply, created FROM replies "
                "WHERE device_id = ? AND idempotency_key = ?",
                (device, key),
            ).fetchone()
            if row is not None and row[3] >= now - ttl_s:
                if row[0] != method or bytes(row[1]) != request_hash:
                    raise ReplyConflict(row[0])
                return bytes(row[2])
            if row is not None:  # expired: the key is free again
                db.execute(
                    "DELETE FROM replies WHERE device_id = ? AND idempotency_key = ?", (device, key)
                )
            reply = run()
            cur = db.execute(
                "INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, idempotency_key) DO NOTHING",
                (device, key, method, request_hash, reply, now),
            )
            if cur.rowcount != 1:
                raise _RacedInsert
            return reply

        for _ in range(3):
            try:
                return self._tx(tx)
            except _RacedInsert:
                continue
        raise StoreError(f"idempotency key of {device!r} kept racing another writer")

    def reply_method(self, device: str, key: str, ttl_s: float) -> str | None:
        """Return the method whose reply is cached under this device's key, if any."""
        with self._read() as db:
            row = db.execute(
                "SELECT method FROM replies WHERE device_id = ? AND idempotency_key = ? "
                "AND created >= ?",
                (device, key, time.time() - ttl_s),
            ).fetchone()
        return None if row is None else row[0]
