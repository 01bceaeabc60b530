"""Cached replies of idempotent writes: ``SqlStore.once`` and ``reply_method``.

A write and its reply commit in one transaction, so a crash cannot apply it twice; the
reply is bound to the device, the key, the method and a hash of the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from auth_service.store_types import ReplyConflict, StoreError, _RacedInsert

# Expired cached replies are deleted at most this often (seconds), by the next write.
PURGE_EVERY_S = 60.0


class ReplyStore:
    """Mixin over ``SqlStore``: needs ``_read`` and ``_tx``."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable
    _purged_at = float("-inf")

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
