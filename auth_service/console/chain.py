"""Whether the audit log's hash chains verify: ``kfaar audit verify``, run in the background.

Uses ``auth_service.audit_verify`` where this kfaar has it (else the state is ``no chain``),
over a read-only connection. Verifying hashes every row, so it runs in a thread at most
every ``RECHECK_S`` seconds and pages show the latest result.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
RECHECK_S = 60.0


@dataclass(frozen=True)
class ChainStatus:
    state: str  # "verified", "broken", "no chain", "checking" or "error"
    detail: str = ""
    at: float | None = None


class Chain:
    """The chain state of one SQLite store, checked against the service key if known."""

    def __init__(self, db: Path, key_file: Path | None = None) -> None:
        self.db, self.key_file = Path(db), key_file
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
        path = Path(path) if path else service_key.default_path(self.db)
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
            db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            try:
                rows = db.execute(
                    f"SELECT id, {AUDIT_COLUMNS}, prev_hash, row_hash FROM audit ORDER BY id"
                ).fetchall()
                points = db.execute(
                    "SELECT writer, seq, row_hash, at, signature, verify_key "
                    "FROM audit_checkpoints ORDER BY id"
                ).fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError as exc:  # a store from before the chain
            return ChainStatus("no chain", f"the store has no chain columns ({exc})", time.time())
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
