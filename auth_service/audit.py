"""The audit trail as evidence: hash-chained rows, signed checkpoints, structured subjects.

Every row carries the SHA-256 of its predecessor in its writer's chain (one chain per
writer: a replica, ``$KFAAR_AUDIT_WRITER``, default the host name), its sequence number
in that chain and its own hash over everything it records. The writer's chain head is
read and extended inside the row's own transaction, under a lock on the writer (SQLite's
write lock; a PostgreSQL advisory lock), so concurrent calls and several replicas never
fork a chain. Every ``CHECKPOINT_EVERY`` rows, and when the service stops, the head is
signed with the service key (auth_service/service_key.py, kept out of the database) and
logged, so rows cut off the end are found too. ``kfaar audit verify`` checks all of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import nacl.exceptions

from auth_service.service_key import ServiceKey

log = logging.getLogger(__name__)

# The console reads a page's subjects' last accepted Verify, and filters the decision log
# by subject, by audit.subject_id: without an index both scan the whole log (schema 9).
SUBJECT_INDEX = "CREATE INDEX audit_subject ON audit (subject_id);"

GENESIS = bytes(32)
CHECKPOINT_EVERY = 256
WRITER_ENV = "KFAAR_AUDIT_WRITER"
_SEP = "\x1f"  # the store's scope/subject separator (auth_service/authz.py)
AUDIT_COLUMNS = "at, device_id, method, scope, subject, outcome, count, writer, seq"


def default_writer() -> str:
    """Name this process's audit chain: $KFAAR_AUDIT_WRITER, else the host name."""
    return os.environ.get(WRITER_ENV) or socket.gethostname() or "kfaar"


def split_key(key: str | None) -> tuple[str | None, str | None]:
    """Split a stored subject key into (scope, subject); default-scope keys have no prefix."""
    if key is None:
        return None, None
    scope, sep, subject = key.partition(_SEP)
    return (scope, subject) if sep else ("default", key)


def row_hash(prev: bytes, fields: tuple) -> bytes:
    """Hash one audit row: its predecessor's hash and its fields in AUDIT_COLUMNS order."""
    at, *rest = fields
    body = json.dumps([repr(float(at)), *rest], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(b"kfaar-audit-v1\0" + bytes(prev) + body.encode()).digest()


def checkpoint_message(writer: str, seq: int, head: bytes, at: float) -> bytes:
    """Return what a checkpoint signature covers."""
    body = json.dumps([writer, int(seq), repr(float(at))], separators=(",", ":"))
    return b"kfaar-audit-checkpoint\0" + body.encode() + b"\0" + bytes(head)


class AuditChain:
    """Mixin over ``SqlStore``: appends chained audit rows and signs checkpoints."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable
    service_key: ServiceKey | None = None
    audit_writer: str = ""

    def _lock_audit(self, db: Any, writer: str) -> None:
        """Serialize appends to one writer's chain (SQLite: its write lock already does)."""

    def _writer(self) -> str:
        if not self.audit_writer:
            self.audit_writer = default_writer()
        return self.audit_writer

    def audit(
        self,
        device_id: str | None,
        method: str,
        subject: str | None,
        outcome: str,
        count: int = 1,
    ) -> None:
        """Append one chained row; ``subject`` is the store's key (scope and subject id)."""
        self._tx(lambda db: self._append_audit(db, device_id, method, subject, outcome, count))

    def _append_audit(
        self, db: Any, device: str | None, method: str, key: str | None, outcome: str, count: int
    ) -> None:
        writer = self._writer()
        self._lock_audit(db, writer)
        head = db.execute(
            "SELECT seq, row_hash FROM audit WHERE writer = ? ORDER BY seq DESC LIMIT 1",
            (writer,),
        ).fetchone()
        seq, prev = (int(head[0]) + 1, bytes(head[1])) if head else (1, GENESIS)
        scope, subject = split_key(key)
        at = time.time()
        fields = (at, device, method, scope, subject, outcome, int(count), writer, seq)
        h = row_hash(prev, fields)
        shown = None if key is None else key.replace(_SEP, "/")  # the old readable column
        db.execute(
            f"INSERT INTO audit ({AUDIT_COLUMNS}, subject_id, prev_hash, row_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*fields, shown, prev, h),
        )
        if seq % CHECKPOINT_EVERY == 0:
            self._sign_checkpoint(db, writer, seq, h)

    def _sign_checkpoint(self, db: Any, writer: str, seq: int, head: bytes) -> None:
        if self.service_key is None:
            return
        at = time.time()
        signature = self.service_key.signing.sign(checkpoint_message(writer, seq, head, at))
        db.execute(
            "INSERT INTO audit_checkpoints (writer, seq, row_hash, at, signature, verify_key) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (writer, seq, head, at, signature.signature, self.service_key.verify_key),
        )
        # A copy outside the database: rows cut off after this point are still found.
        log.info("audit checkpoint %s seq %d head %s", writer, seq, head.hex())

    def audit_checkpoint(self) -> None:
        """Sign this writer's chain head now (on stop, and periodically), if it moved."""

        def run(db: Any) -> None:
            writer = self._writer()
            self._lock_audit(db, writer)
            head = db.execute(
                "SELECT seq, row_hash FROM audit WHERE writer = ? ORDER BY seq DESC LIMIT 1",
                (writer,),
            ).fetchone()
            if head is None:
                return
            done = db.execute(
                "SELECT MAX(seq) FROM audit_checkpoints WHERE writer = ?", (writer,)
            ).fetchone()
            if done[0] is None or int(done[0]) < int(head[0]):
                self._sign_checkpoint(db, writer, int(head[0]), bytes(head[1]))

        if self.service_key is not None:
            self._tx(run)

    def audited(self, writer: str, method: str, outcome: str) -> bool:
        """Return whether ``writer``'s chain holds a row of ``method`` with ``outcome``."""
        sql = "SELECT 1 FROM audit WHERE writer = ? AND method = ? AND outcome = ? LIMIT 1"
        with self._read() as db:
            row = db.execute(sql, (writer, method, outcome)).fetchone()
        return row is not None

    def audit_row_hash(self, writer: str, seq: int) -> bytes | None:
        """Return the hash of ``writer``'s row ``seq``, or None when there is none."""
        with self._read() as db:
            row = db.execute(
                "SELECT row_hash FROM audit WHERE writer = ? AND seq = ?", (writer, seq)
            ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def latest_checkpoint(self, writer: str) -> tuple[int, bytes] | None:
        """Return (seq, head) of ``writer``'s newest checkpoint signed by this service key."""
        key = self.service_key
        if key is None:
            return None
        with self._read() as db:
            row = db.execute(
                "SELECT seq, row_hash, at, signature FROM audit_checkpoints WHERE writer = ? "
                "AND verify_key = ? ORDER BY seq DESC LIMIT 1",
                (writer, key.verify_key),
            ).fetchone()
        if row is None:
            return None
        seq, head = int(row[0]), bytes(row[1])
        try:
            key.signing.verify_key.verify(
                checkpoint_message(writer, seq, head, float(row[2])), bytes(row[3])
            )
        except nacl.exceptions.BadSignatureError:
            log.error("audit checkpoint %s seq %d is not signed by the service key", writer, seq)
            return None
        return seq, head

    def audit_log(self) -> list[tuple]:
        """Return (at, device, method, "scope/subject" or subject, outcome) rows, oldest first."""
        with self._read() as db:
            return db.execute(
                "SELECT at, device_id, method, subject_id, outcome FROM audit ORDER BY id"
            ).fetchall()

    def audit_rows(self) -> list[tuple]:
        """Return every row: (id, AUDIT_COLUMNS..., prev_hash, row_hash), oldest first."""
        with self._read() as db:
            return db.execute(
                f"SELECT id, {AUDIT_COLUMNS}, prev_hash, row_hash FROM audit ORDER BY id"
            ).fetchall()

    def audit_checkpoints(self) -> list[tuple]:
        """Return every checkpoint: (writer, seq, row_hash, at, signature, verify_key)."""
        with self._read() as db:
            return db.execute(
                "SELECT writer, seq, row_hash, at, signature, verify_key "
                "FROM audit_checkpoints ORDER BY id"
            ).fetchall()
