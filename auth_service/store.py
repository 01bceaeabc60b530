"""The template store: one interface, embedded SQLite by default (WAL, migrations).

It keeps only what DESIGN.md section 3 allows: templates under pseudonymous subject ids,
tagged with model version and embedding space; device verify keys; hashed app tokens;
replies kept for idempotent retries; and an audit log without embeddings.
This module holds the schema migrations and the template SQL; the interface and errors
are in store_types.py, devices, tokens, nonces and budgets in store_guard.py, cached
replies in store_replies.py, owners and token binding in store_security.py.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from auth_service import audit, changelog, store_security
from auth_service.audit import AuditChain
from auth_service.changelog import ChangeLog
from auth_service.store_generations import GENERATION_COLUMNS, GENERATION_JOIN, GenerationStore
from auth_service.store_guard import SQLITE_MIGRATION, GuardStore
from auth_service.store_replies import ReplyStore
from auth_service.store_security import SecurityStore

# The interface and types live in store_types; callers keep importing them from here.
from auth_service.store_types import (  # noqa: F401
    EMBED_DIM,
    CapReached,
    Gallery,
    NotOwner,
    QuotaReached,
    ReplyConflict,
    StoreCorrupt,
    StoreError,
    StoreMissing,
    StoreUnavailable,
    TemplateStore,
    _blob,
    _vectors,
)

log = logging.getLogger(__name__)

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
    # 6: per-subject generations bound into template tags (store_generations.py).
    store_security.SQLITE_GENERATIONS,
    # 7: devices bound to their client certificate (store_security.py).
    store_security.SQLITE_DEVICE_CERTS,
    # 8: subjects by owner, for the per-app quota (store_security.py).
    store_security.OWNER_INDEX,
    # 9: audit rows by subject, for the console's subject pages (audit.py).
    audit.SUBJECT_INDEX,
)


class SqlStore(
    AuditChain, SecurityStore, GenerationStore, ChangeLog, GuardStore, ReplyStore, TemplateStore
):
    """The SQL both backends share; they supply ``_read``, ``_tx`` and migrations.

    Statements use ``?`` placeholders and only SQL that SQLite and PostgreSQL both accept
    (``INSERT ... ON CONFLICT`` rather than ``INSERT OR REPLACE``).
    """

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

    # The rollback anchor (auth_service/anchor.py) the service keeps; None: not kept.
    anchor: Any = None

    def seal(self) -> None:
        """Sign the audit chain head now and move the rollback anchor on to it.

        Call outside any transaction, after a write that a rollback must not undo (Rekey,
        Revoke, a device or token removed), periodically and at stop. Never raises: the
        write it follows has committed; a failure is logged, and the anchor stays behind.
        """
        try:
            self.audit_checkpoint()
            if self.anchor is not None:
                self.anchor.advance()
        except Exception as exc:  # the store or the anchor's folder is unavailable
            log.warning("could not move the rollback anchor on: %s", exc)

    def make_durable(self) -> None:
        """Make every commit so far survive a power cut (PostgreSQL's commits already do)."""

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
        gen = self._generation(db, subject, move_on=False)  # a new subject gets its first
        db.executemany(
            "INSERT INTO templates (subject_id, model, space, vector, created, tag, generation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (subject, model, space, r, now, key and key.tag(subject, model, space, r, gen), gen)
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
        quota: int | None = None,
    ) -> int:
        """Add templates as ``owner`` in one transaction: claim, ownership, cap, insert.

        A new subject is claimed for ``owner``; an existing one takes templates only from
        its owner (or ``admin``), and only up to ``cap`` in all. The subject is locked
        first, so replicas enrolling it at once cannot both pass the cap check. A subject
        without templates counts against ``owner``'s ``quota`` of subjects (None: none),
        checked under a lock on the owner, so concurrent claims cannot pass it together.
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
            claim = found is None and held == 0
            if not claim and not admin and (found is None or found[0] != owner):
                raise NotOwner(None if found is None else found[0])
            if held + len(rows) > cap:
                raise CapReached(held)
            if held == 0 and quota is not None:  # a new or revoked subject takes a place
                self._check_quota(db, owner, quota)
            if claim:
                db.execute(
                    "INSERT INTO subject_owners VALUES (?, ?, ?, ?)",
                    (subject, owner, device, time.time()),
                )
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
            self._generation(db, subject, move_on=True)  # the old rows' tags stop passing
            return self._insert(db, subject, model, space, rows)

        return self._tx(run)

    def revoke(self, subject: str) -> int:
        def run(db: Any) -> int:
            n = db.execute("DELETE FROM templates WHERE subject_id = ?", (subject,)).rowcount
            if n:
                self._generation(db, subject, move_on=True)  # a put-back row fails its tag
                self._log_change(db, subject)
            return n

        return self._tx(run)

    def subject_templates(self, subject: str) -> tuple[list[tuple[str, int]], np.ndarray]:
        """Return each template's (model, space) and the vectors (N, 128) of one subject."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT t.model, t.space, t.vector, {GENERATION_COLUMNS} FROM templates t "
                f"{GENERATION_JOIN} WHERE t.subject_id = ? ORDER BY t.id",
                (subject,),
            ).fetchall()
        rows = self._tagged([(subject, *r) for r in rows])
        return [(m, s) for _, m, s, _ in rows], _vectors([v for *_, v in rows])

    def gallery(self, model: str, space: int) -> Gallery:
        with self._read() as db:
            rows = db.execute(
                f"SELECT t.subject_id, t.model, t.space, t.vector, {GENERATION_COLUMNS} "
                f"FROM templates t {GENERATION_JOIN} WHERE t.model = ? AND t.space = ? "
                "ORDER BY t.id",
                (model, space),
            ).fetchall()
        rows = self._tagged(rows)
        return Gallery([r[0] for r in rows], _vectors([r[3] for r in rows]))
