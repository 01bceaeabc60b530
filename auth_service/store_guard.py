"""The store's guard state: devices and their scopes, tokens and their grants, spent
nonces and guess budgets.

Shared by SQLite and PostgreSQL (``SqlStore`` inherits it). Nonces and budgets live in
the store rather than in memory so that a restart neither re-opens the replay window nor
forgets how much a device or subject has guessed, and replicas on one database share them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

# Schema additions, one migration each for SQLite and PostgreSQL (appended in store.py
# and store_postgres.py). Existing devices and tokens land in the default scope.
SQLITE_MIGRATION = """
    ALTER TABLE devices ADD COLUMN scope TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE app_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE app_tokens ADD COLUMN devices TEXT NOT NULL DEFAULT '';
    ALTER TABLE app_tokens ADD COLUMN methods TEXT NOT NULL DEFAULT '';
    CREATE TABLE nonces (
        device_id TEXT NOT NULL, nonce BLOB NOT NULL, expires_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, nonce)
    );
    CREATE INDEX nonces_expiry ON nonces (expires_ms);
    CREATE TABLE guess_budgets (
        budget_key TEXT PRIMARY KEY, level REAL NOT NULL, at REAL NOT NULL
    );
"""
POSTGRES_MIGRATION = (
    SQLITE_MIGRATION.replace("BLOB", "BYTEA")
    .replace("INTEGER", "BIGINT")
    .replace("REAL", "DOUBLE PRECISION")
)
NONCE_PURGE_EVERY_S = 60.0


class GuardStore:
    """Mixin over ``SqlStore``: needs ``_read`` and ``_tx``."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable
    _nonces_purged_at = float("-inf")

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

    def device(self, device_id: str) -> tuple[bytes, str] | None:
        """Return a registered device's verify key and scope."""
        with self._read() as db:
            row = db.execute(
                "SELECT verify_key, scope FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def token_grant(self, token_hash: bytes) -> tuple[str, str, list[str], list[str]] | None:
        """Return a token's app name, scope, devices and methods (empty lists: defaults)."""
        with self._read() as db:
            row = db.execute(
                "SELECT app_name, scope, devices, methods FROM app_tokens WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
        if row is None:
            return None
        app, scope, devices, methods = row
        return (
            app,
            scope,
            [d for d in devices.split("\n") if d],
            [m for m in methods.split(",") if m],
        )

    def spend_nonce(self, device_id: str, nonce: bytes, expires_ms: int, now_ms: int) -> bool:
        """Record a device's nonce until ``expires_ms``; False when it was already spent."""

        def run(db: Any) -> bool:
            if now_ms / 1000 - self._nonces_purged_at >= NONCE_PURGE_EVERY_S:
                db.execute("DELETE FROM nonces WHERE expires_ms < ?", (now_ms,))
                self._nonces_purged_at = now_ms / 1000
            cur = db.execute(
                "INSERT INTO nonces VALUES (?, ?, ?) ON CONFLICT (device_id, nonce) DO NOTHING",
                (device_id, nonce, expires_ms),
            )
            return cur.rowcount == 1

        return bool(self._tx(run))

    def budgets(self, keys: list[str]) -> dict[str, tuple[float, float]]:
        """Return the stored (level, at) of the budget keys that have a row."""
        marks = ", ".join("?" * len(keys))
        with self._read() as db:
            rows = db.execute(
                f"SELECT budget_key, level, at FROM guess_budgets WHERE budget_key IN ({marks})",
                tuple(keys),
            ).fetchall()
        return {k: (float(v), float(a)) for k, v, a in rows}

    def update_budgets(
        self,
        keys: list[str],
        decide: Callable[[dict[str, tuple[float, float]]], tuple[dict, object]],
    ) -> object:
        """Read budget rows, let ``decide`` return (rows to write, result), write, in one tx."""

        def run(db: Any) -> object:
            self._lock_budgets(db, keys)
            marks = ", ".join("?" * len(keys))
            rows = db.execute(
                f"SELECT budget_key, level, at FROM guess_budgets WHERE budget_key IN ({marks})",
                tuple(keys),
            ).fetchall()
            writes, result = decide({k: (float(v), float(a)) for k, v, a in rows})
            if writes:  # one statement, one round trip, while the budgets are locked
                db.execute(
                    "INSERT INTO guess_budgets VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(writes))
                    + " ON CONFLICT (budget_key) DO UPDATE SET level = excluded.level, "
                    "at = excluded.at",
                    tuple(x for key, (level, at) in writes.items() for x in (key, level, at)),
                )
            return result

        return self._tx(run)

    def _lock_budgets(self, db: Any, keys: list[str]) -> None:
        """Serialize writers of these budgets (SQLite: its write lock already does)."""
