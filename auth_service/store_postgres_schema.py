"""The PostgreSQL store's schema: its migrations, applied once, one service at a time."""

from __future__ import annotations

from typing import Any

from auth_service import audit, changelog, store_security
from auth_service.store_guard import POSTGRES_MIGRATION
from auth_service.store_types import StoreError

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
    # 4: the change log that replicas' indexes follow (see changelog.py).
    changelog.POSTGRES_MIGRATION,
    # 5: subject owners, token binding, template tags, the audit chain (store_security.py).
    store_security.POSTGRES_MIGRATION,
    # 6: per-subject generations bound into template tags (store_security.py).
    store_security.POSTGRES_GENERATIONS,
    # 7: devices bound to their client certificate (store_security.py).
    store_security.POSTGRES_DEVICE_CERTS,
    # 8: subjects by owner, for the per-app quota (store_security.py).
    store_security.OWNER_INDEX,
    # 9: audit rows by subject, for the console's subject pages (audit.py).
    audit.SUBJECT_INDEX,
)


def migrate(db: Any) -> None:
    """Bring the schema up to date; one service migrates at a time, even if several start.

    ``db`` is store_postgres's ``_Connection``: psycopg with ``?`` placeholders.
    """
    with db.conn.transaction():
        db.execute("SELECT pg_advisory_xact_lock(?)", (0x6B666161,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):  # an older replica during a rolling upgrade
            raise StoreError(
                f"the database has schema version {version}, newer than this kfaar's "
                f"{len(MIGRATIONS)}: run the newer kfaar"
            )
        if version == len(MIGRATIONS):
            return
        for script in MIGRATIONS[version:]:
            db.conn.execute(script)
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
