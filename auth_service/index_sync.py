"""Keep one replica's 1:N indexes in step with every replica's writes, through the change log.

A background thread waits for an announced change (PostgreSQL NOTIFY) or the poll
interval, reads the log after the last change it applied, and re-reads each changed
subject's templates into the loaded indexes. A gap in the log (changes pruned while this
replica was away) reloads the indexes from the store instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from auth_service.store import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncConfig:
    # Polling bounds the delay when a notification is lost (or on SQLite, which has none).
    poll_s: float = 1.0
    batch: int = 10_000  # changes read per query
    retention_s: float = 86_400.0  # changes older than this are pruned from the log
    prune_every_s: float = 600.0


class IndexFollower:
    """Apply the change log to this replica's indexes, from ``seq`` on."""

    def __init__(
        self,
        store,  # a SqlStore (auth_service/changelog.py gives it the log)
        apply: Callable[[str], None],
        reload: Callable[[], None],
        seq: int,
        config: SyncConfig | None = None,
        observe_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.store, self.apply, self.reload = store, apply, reload
        self.config = config or SyncConfig()
        self.seq = seq  # the last change applied (or loaded with the indexes)
        self.observe_lag = observe_lag
        self._waiter = store.change_waiter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = float("-inf")

    def catch_up(self) -> int:
        """Apply every change logged after ``seq``; return how many were applied."""
        applied = 0
        while rows := self.store.changes_since(self.seq, self.config.batch):
            if rows[0][0] != self.seq + 1:  # pruned before we read them: start over
                latest = self.store.change_seq()
                log.warning("change log has a gap after %d: reloading the indexes", self.seq)
                self.reload()
                self.seq = latest
                continue
            subjects = dict.fromkeys(subject for _, subject, _ in rows)  # once each, in order
            for subject in subjects:
                self.apply(subject)
            self.seq = rows[-1][0]
            applied += len(rows)
            if self.observe_lag is not None:
                now = time.time()
                for _, _, at in rows:
                    self.observe_lag(max(0.0, now - at))
        return applied

    def start(self) -> None:
        """Follow the log in a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="kfaar-index-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following and release the listening connection."""
        self._stop.set()
        self._waiter.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        down = False
        while not self._stop.is_set():
            try:
                self.catch_up()
                self._prune()
                if down:
                    log.info("change log reachable again; indexes caught up to %d", self.seq)
                down = False
            except StoreUnavailable as exc:
                if not down:  # once per outage, not once per poll
                    log.warning("cannot read the change log (%s); retrying", exc)
                down = True
            except Exception:  # a bug must not stop the sync for good: log it, keep going
                log.exception("index sync failed; retrying")
            self._waiter.wait(self.config.poll_s)

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at >= self.config.prune_every_s:
            self.store.prune_changes(now - self.config.retention_s)
            self._pruned_at = now
