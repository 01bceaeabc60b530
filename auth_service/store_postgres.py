"""The PostgreSQL template store: the same SQL as SQLite, for deployments that run a server.

Embeddings are ``bytea`` (float32, little-endian), exactly as in SQLite: pgvector is not
needed because 1:N search runs in the service's own index (auth_service/index.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from auth_service.store import SqlStore, StoreError
from auth_service.store_guard import POSTGRES_MIGRATION

# Each entry upgrades the schema by one version; never edit a released entry.
MIGRATIONS = (
    """
    CREATE TABLE templates (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        subject_id TEXT NOT NULL,
        model TEXT NOT NULL,
        space INTEGER NOT NULL,
        vector BYTEA NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX templates_gallery ON templates (model, space);
    CREATE INDEX templates_subject ON templates (subject_id);
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY, verify_key BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE app_tokens (
        app_name TEXT PRIMARY KEY, token_hash BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE replies (
        idempotency_key TEXT PRIMARY KEY, method TEXT NOT NULL, reply BYTEA NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        device_id TEXT,
        method TEXT NOT NULL,
        subject_id TEXT,
        outcome TEXT NOT NULL
    );
    """,
    # 2: cached replies bound to device, method and request hash (see store.py).
    """
    DROP TABLE replies;
    CREATE TABLE replies (
        device_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        method TEXT NOT NULL,
        request_hash BYTEA NOT NULL,
        reply BYTEA NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device_id, idempotency_key)
    );
    CREATE INDEX replies_created ON replies (created);
    """,
    # 3: device and token scopes, spent nonces and guess budgets (see store_guard.py).
    POSTGRES_MIGRATION,
)


class _Connection:
    """Give a psycopg connection sqlite3's calling style: ``?`` placeholders, executemany."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def close(self) -> None:
        self.conn.close()


class PostgresStore(SqlStore):
    """PostgreSQL through psycopg 3; one connection guarded by a lock, like SQLite."""

    def __init__(self, url: str) -> None:
        import psycopg  # only deployments that use PostgreSQL need it

        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            # The message names host and database, never the password.
            raise StoreError(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
        self.db = _Connection(conn)
        self.lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        with self.lock, self.db.conn.transaction():
            # One service migrates at a time, even if several start together.
            self.db.execute("SELECT pg_advisory_xact_lock(?)", (0x6B666161,))
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
            row = self.db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            for script in MIGRATIONS[version:]:
                self.db.conn.execute(script)
            self.db.execute("DELETE FROM schema_version")
            self.db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))

    @property
    def schema_version(self) -> int:
        with self.lock:
            return self.db.execute("SELECT version FROM schema_version").fetchone()[0]

    def _tx(self, fn: Callable[[Any], object]) -> object:
        # Nested calls (a write inside ``once``) become savepoints of the enclosing one.
        with self.lock, self.db.conn.transaction():
            return fn(self.db)
