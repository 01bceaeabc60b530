"""Security state in the store: subject owners, token binding, template tags, audit chain.

Schema version 5 (SQLite and PostgreSQL):
- ``subject_owners``: the app (token) that first enrolled each subject; only it, or the
  admin, may add templates, rekey or revoke. Subjects older than this have no owner
  row, and only the admin may change them.
- ``devices.single_view``: the admin vouches that the device never fuses frames, so its
  probes are decided at the single-frame threshold (every other device's at the stricter).
- ``app_tokens.shared``: tokens issued without devices are bound to the first device that
  signs with them, unless shared. Tokens of older databases keep exactly what they had:
  unbound ones are marked shared and their default methods written out.
- ``templates.tag``: an HMAC under the service key (auth_service/service_key.py).
- ``audit``: structured scope and subject, an aggregation count, and the hash chain
  (auth_service/audit.py); ``audit_checkpoints`` holds the signed chain heads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from auth_service.store_types import QuotaReached

log = logging.getLogger(__name__)

_OLD_DEFAULT_METHODS = "Enroll,Identify,Rekey,Verify"
SQLITE_MIGRATION = f"""
    CREATE TABLE subject_owners (
        subject_id TEXT PRIMARY KEY, app TEXT NOT NULL, device_id TEXT, created REAL NOT NULL
    );
    ALTER TABLE app_tokens ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN single_view INTEGER NOT NULL DEFAULT 0;
    UPDATE app_tokens SET shared = 1 WHERE devices = '';
    UPDATE app_tokens SET methods = '{_OLD_DEFAULT_METHODS}' WHERE methods = '';
    ALTER TABLE templates ADD COLUMN tag BLOB;
    ALTER TABLE audit ADD COLUMN scope TEXT;
    ALTER TABLE audit ADD COLUMN subject TEXT;
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN writer TEXT;
    ALTER TABLE audit ADD COLUMN seq INTEGER;
    ALTER TABLE audit ADD COLUMN prev_hash BLOB;
    ALTER TABLE audit ADD COLUMN row_hash BLOB;
    CREATE UNIQUE INDEX audit_chain ON audit (writer, seq);
    CREATE TABLE audit_checkpoints (
        id INTEGER PRIMARY KEY, writer TEXT NOT NULL, seq INTEGER NOT NULL,
        row_hash BLOB NOT NULL, at REAL NOT NULL, signature BLOB NOT NULL,
        verify_key BLOB NOT NULL
    );
"""
POSTGRES_MIGRATION = (
    SQLITE_MIGRATION.replace(
        "id INTEGER PRIMARY KEY", "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    .replace("BLOB", "BYTEA")
    .replace("INTEGER", "BIGINT")
    .replace("REAL", "DOUBLE PRECISION")
)

# 6: per-subject generations. Every Rekey and Revoke (and a subject's first template)
# moves the subject's generation on; template tags bind it, and the generation row has
# its own tag, so a template row put back after a Rekey or Revoke fails its tag. Rows of
# schema 5 keep generation 0 until `kfaar db migrate` re-tags them under the key.
SQLITE_GENERATIONS = """
    CREATE TABLE subject_generations (
        subject_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, tag BLOB
    );
    ALTER TABLE templates ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
"""
POSTGRES_GENERATIONS = SQLITE_GENERATIONS.replace("BLOB", "BYTEA").replace("INTEGER", "BIGINT")
# 7: a device may be bound to its TLS client certificate (SHA-256 of the DER).
SQLITE_DEVICE_CERTS = "ALTER TABLE devices ADD COLUMN cert_sha256 BLOB;"
POSTGRES_DEVICE_CERTS = SQLITE_DEVICE_CERTS.replace("BLOB", "BYTEA")
# Enroll counts an app's subjects against its quota (auth_service/limits.py) inside the
# write transaction: without the index that is a scan of every owner row in the store.
OWNER_INDEX = "CREATE INDEX subject_owners_app ON subject_owners (app);"


# The subjects an app has claimed, and those of them holding templates (a revoked subject
# stays claimed by its app but takes no place in its quota).
_CLAIMED_SQL = "SELECT COUNT(*) FROM subject_owners WHERE app = ?"
_OWNED_SQL = (
    "SELECT COUNT(*) FROM subject_owners o WHERE o.app = ? AND EXISTS "
    "(SELECT 1 FROM templates t WHERE t.subject_id = o.subject_id)"
)


class SecurityStore:
    """Mixin over ``SqlStore``: needs ``_read``, ``_tx`` and ``_lock_subject``."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable
    _lock_subject: Callable[[Any, str], None]

    # -- ownership ----------------------------------------------------------------
    def _check_quota(self, db: Any, owner: str, quota: int) -> None:
        """Raise QuotaReached if ``owner`` holds ``quota`` subjects (inside a write)."""
        self._lock_subject(db, f"\x1fowner\x1f{owner}")  # concurrent claims queue here
        # Claims bound the held subjects from above and count off the index alone; only
        # near the quota are the revoked ones (claimed, without templates) left out.
        held = int(db.execute(_CLAIMED_SQL, (owner,)).fetchone()[0])
        if held >= quota:
            held = int(db.execute(_OWNED_SQL, (owner,)).fetchone()[0])
        if held >= quota:
            raise QuotaReached(held)

    def subject_owner(self, subject: str) -> str | None:
        """Return the app that owns a subject, or None (never enrolled, or older)."""
        with self._read() as db:
            row = db.execute(
                "SELECT app FROM subject_owners WHERE subject_id = ?", (subject,)
            ).fetchone()
        return None if row is None else row[0]

    def device_single_view(self, device_id: str) -> bool:
        """Return whether a device was registered as sending single-frame probes only."""
        with self._read() as db:
            row = db.execute(
                "SELECT single_view FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return bool(row and row[0])

    def set_single_view(self, device_id: str, single_view: bool) -> None:
        self._tx(
            lambda db: db.execute(
                "UPDATE devices SET single_view = ? WHERE device_id = ?",
                (int(single_view), device_id),
            )
        )

    def set_device_cert(self, device_id: str, cert_sha256: bytes | None) -> None:
        """Bind a device to the SHA-256 of its client certificate (None: unbind)."""
        self._tx(
            lambda db: db.execute(
                "UPDATE devices SET cert_sha256 = ? WHERE device_id = ?",
                (cert_sha256, device_id),
            )
        )

    def device_cert(self, device_id: str) -> bytes | None:
        """Return the client certificate's SHA-256 a device is bound to, if any."""
        with self._read() as db:
            row = db.execute(
                "SELECT cert_sha256 FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    # -- tokens bound on first use ------------------------------------------------------
    def token_row(self, token_hash: bytes) -> tuple[str, str, list[str], list[str], bool] | None:
        """Return a token's app, scope, devices, methods and whether it is shared."""
        with self._read() as db:
            row = db.execute(
                "SELECT app_name, scope, devices, methods, shared FROM app_tokens "
                "WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
        if row is None:
            return None
        app, scope, devices, methods, shared = row
        split = [d for d in devices.split("\n") if d], [m for m in methods.split(",") if m]
        return app, scope, *split, bool(shared)

    def bind_token(self, app: str, device: str) -> list[str]:
        """Bind an unbound, unshared token to ``device``; return the devices it is bound to."""

        def run(db: Any) -> list[str]:
            db.execute(
                "UPDATE app_tokens SET devices = ? WHERE app_name = ? AND devices = '' "
                "AND shared = 0",
                (device, app),
            )
            row = db.execute("SELECT devices FROM app_tokens WHERE app_name = ?", (app,)).fetchone()
            return [] if row is None else [d for d in row[0].split("\n") if d]

        return list(self._tx(run))

    def set_token_shared(self, app: str, shared: bool) -> None:
        self._tx(
            lambda db: db.execute(
                "UPDATE app_tokens SET shared = ? WHERE app_name = ?", (int(shared), app)
            )
        )
