"""Whether the audit log's hash chains verify: ``kfaar audit verify``, run in the background.

Uses ``auth_service.audit_verify`` where this kfaar has it (else the state is ``no chain``),
over a read-only connection to the SQLite file or PostgreSQL (console/sql.py). Verifying
hashes every row, so it runs in a thread at most every ``RECHECK_S`` seconds and pages show
the latest result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from auth_service.console.sql import Source, SqliteSource, StoreUnreadable

log = logging.getLogger(__name__)
RECHECK_S = 60.0


@dataclass(frozen=True)
class ChainStatus:
    state: str  # "verified", "broken", "no chain", "checking" or "error"
    detail: str = ""
    at: float | None = None


class Chain:
    """The chain state of one store, checked against the service key if known."""

    def __init__(self, db: Path | Source, key_file: Path | None = None) -> None:
        self.source: Source = SqliteSource(db) if isinstance(db, (str, Path)) else db
        self.key_file = key_file
        self._status = ChainStatus("checking", "the first check is running")
        self._at = float("-inf")
        self._running = False
        self._lock = threading.Lock()

    def status(self) -> ChainStatus:
        """Return the latest result; start a check in the background when it is stale."""
        with self._lock:
            if not self._running and time.monotonic() - self._at >= RECHECK_S:
                self._running = True
                threading.Thread(target=self._background, daemon=True).start()
            return self._status

    def check_now(self) -> ChainStatus:
        """Verify now, in this thread, and return the result."""
        status = self._check()
        with self._lock:
            self._status, self._at = status, time.monotonic()
        return status

    def _background(self) -> None:
        try:
            self.check_now()
        finally:
            with self._lock:
                self._running = False

    def _trusted(self) -> set[bytes]:
        try:
            from auth_service import service_key
        except ImportError:
            return set()
        path = self.key_file or os.environ.get(service_key.KEY_ENV)
        if not path and isinstance(self.source, SqliteSource):  # DB.key next to the file
            path = service_key.default_path(self.source.path)
        if not path:  # PostgreSQL: only a key file given names the trusted key
            return set()
        path = Path(path)
        try:
            return {service_key.load(path).verify_key} if path.exists() else set()
        except Exception as exc:  # an unreadable key: say so, check the chains anyway
            log.warning("service key %s: %s", path, exc)
            return set()

    def _check(self) -> ChainStatus:
        try:
            from auth_service.audit import AUDIT_COLUMNS
            from auth_service.audit_verify import verify_rows
        except ImportError:
            return ChainStatus("no chain", "this kfaar keeps no hash chain", time.time())
        try:
            with self.source.connect() as db:
                rows = db.execute(
                    f"SELECT id, {AUDIT_COLUMNS}, prev_hash, row_hash FROM audit ORDER BY id"
                ).fetchall()
                points = db.execute(
                    "SELECT writer, seq, row_hash, at, signature, verify_key "
                    "FROM audit_checkpoints ORDER BY id"
                ).fetchall()
        except self.source.schema_errors as exc:  # a store from before the chain
            return ChainStatus("no chain", f"the store has no chain columns ({exc})", time.time())
        except StoreUnreadable as exc:  # PostgreSQL down: say so, try again next time
            return ChainStatus("error", str(exc), time.time())
        trusted = self._trusted()
        report = verify_rows(rows, points, trusted)
        detail = (
            f"{report.rows} rows ({report.unchained} from before the chain), "
            f"{report.checkpoints} signed checkpoints"
        )
        if not trusted:
            detail += "; no service key: checkpoint signers not checked"
        if not report.ok:
            return ChainStatus("broken", f"{report.findings[0].message}; {detail}", time.time())
        return ChainStatus("verified", detail, time.time())
