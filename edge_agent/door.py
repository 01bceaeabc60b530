"""Door actions: drive a lock or controller from an attempt's decision, at most once.

Two kinds of action, both optional, both logged:

- a command hook (``--on-accept`` / ``--on-reject``): run as an argv list, never through
  a shell, with the decision as JSON on standard input and a time-out;
- a webhook: an HTTP POST of the same JSON, signed with HMAC-SHA256 over
  ``"<timestamp>.<body>"`` (headers ``X-Kfaar-Timestamp`` and ``X-Kfaar-Signature``), with
  the attempt id as ``Idempotency-Key`` so a controller can drop a repeat.

An accepted decision carries the service's signed access grant (member ``grant``,
base64), passed on unchanged: the HMAC says which camera sent the webhook, the grant that
the service decided; a controller should open only on a valid grant (deploy/door_controller/).

A small SQLite journal records each (attempt, action) before it fires, so a decision
never fires twice, also across restarts of the edge: a webhook that had not been
delivered is resumed at start-up with the same idempotency key, unless it is older than
``max_age_s`` (a door must not open long after the person left); a command hook is
never re-run, because nobody can tell whether it ran to its end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kfaar-Signature"
TIMESTAMP_HEADER = "X-Kfaar-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class DoorConfig:
    on_accept: tuple[str, ...] = ()  # argv of the command run on an accepted attempt
    on_reject: tuple[str, ...] = ()
    webhook_url: str | None = None  # POSTed on every decision (the body says which)
    webhook_secret: bytes = field(default=b"", repr=False)
    journal: Path | None = None  # None: in memory (at most once within this process)
    timeout_s: float = 3.0  # per HTTP request and per command
    retries: int = 4  # webhook tries after the first
    backoff_s: float = 0.25  # doubled after each failed try
    max_age_s: float = 30.0  # an undelivered webhook older than this is dropped


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, headers, body: bytes, max_skew_s: float = 60.0, now=None) -> bool:
    """Check a webhook's signature and freshness, as a door controller should."""
    ts, sig = headers.get(TIMESTAMP_HEADER, ""), headers.get(SIGNATURE_HEADER, "")
    try:
        fresh = abs((now or time.time()) - float(ts)) <= max_skew_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, ts, body), sig)


class Journal:
    """(attempt id, action) -> state, in SQLite: what fired, what still waits."""

    def __init__(self, path: Path | None) -> None:
        self.db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None,
                                  check_same_thread=False)  # fmt: skip
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS door_actions (attempt_id TEXT, action TEXT, "
            "state TEXT, body BLOB, created REAL, PRIMARY KEY (attempt_id, action))"
        )

    def claim(self, attempt_id: str, action: str, body: bytes) -> bool:
        """Record the action as pending; False if this attempt's action was seen before."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO door_actions VALUES (?, ?, 'pending', ?, ?)",
            (attempt_id, action, body, time.time()),
        )
        return cur.rowcount == 1

    def finish(self, attempt_id: str, action: str, state: str) -> None:
        self.db.execute("UPDATE door_actions SET state = ? WHERE attempt_id = ? AND action = ?",
                        (state, attempt_id, action))  # fmt: skip

    def pending(self, action: str) -> list[tuple[str, bytes, float]]:
        rows = self.db.execute("SELECT attempt_id, body, created FROM door_actions "
                               "WHERE action = ? AND state = 'pending'", (action,))  # fmt: skip
        return list(rows)

    def state(self, attempt_id: str, action: str) -> str | None:
        row = self.db.execute("SELECT state FROM door_actions WHERE attempt_id = ? AND "
                              "action = ?", (attempt_id, action)).fetchone()  # fmt: skip
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()


class DoorActions:
    """Fire the configured actions for each decision, at most once per attempt."""

    def __init__(self, cfg: DoorConfig, sleep=time.sleep) -> None:
        if cfg.webhook_url and not cfg.webhook_secret:
            raise ValueError("a webhook needs a secret to sign with")
        if cfg.webhook_url and not cfg.webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s), got {cfg.webhook_url!r}")
        self.cfg, self.sleep = cfg, sleep
        self.journal = Journal(cfg.journal)

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.on_accept or self.cfg.on_reject or self.cfg.webhook_url)

    def resume(self) -> int:
        """Deliver webhooks a previous run left pending; drop stale ones. Return delivered."""
        done = 0
        for attempt_id, body, created in self.journal.pending("webhook"):
            if time.time() - created > self.cfg.max_age_s:
                log.warning("door webhook for attempt %s expired undelivered", attempt_id)
                self.journal.finish(attempt_id, "webhook", "expired")
                continue
            done += self._deliver(attempt_id, body)
        return done

    def fire(self, decision: dict) -> None:
        """Run the hook and the webhook for one decision (it must carry ``attempt_id``)."""
        attempt_id = str(decision["attempt_id"])
        body = json.dumps(decision, sort_keys=True).encode()
        argv = self.cfg.on_accept if decision.get("accepted") else self.cfg.on_reject
        if argv and self.journal.claim(attempt_id, "command", body):
            self._run(attempt_id, argv, body)
        if self.cfg.webhook_url and self.journal.claim(attempt_id, "webhook", body):
            self._deliver(attempt_id, body)

    def _run(self, attempt_id: str, argv: tuple[str, ...], body: bytes) -> None:
        try:
            done = subprocess.run(list(argv), input=body, capture_output=True,
                                  timeout=self.cfg.timeout_s, check=False)  # fmt: skip
            state = "done" if done.returncode == 0 else f"exit {done.returncode}"
        except (OSError, subprocess.TimeoutExpired) as e:
            state = f"failed: {type(e).__name__}"
        self.journal.finish(attempt_id, "command", state)
        log.info("door command %s for attempt %s: %s", argv[0], attempt_id, state)

    def _deliver(self, attempt_id: str, body: bytes) -> bool:
        """POST with retries; True once a 2xx came back (the journal then says done)."""
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            ts = f"{time.time():.3f}"
            req = urllib.request.Request(self.cfg.webhook_url, data=body, method="POST", headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(self.cfg.webhook_secret, ts, body),
                IDEMPOTENCY_HEADER: attempt_id,
            })  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as reply:
                    status = reply.status
            except urllib.error.HTTPError as e:
                status = e.code
            except (OSError, TimeoutError) as e:  # refused, reset, timed out
                status = type(e).__name__
            if isinstance(status, int) and 200 <= status < 300:
                self.journal.finish(attempt_id, "webhook", "done")
                log.info("door webhook for attempt %s delivered (try %d)", attempt_id, attempt + 1)
                return True
            log.warning("door webhook for attempt %s: try %d got %s", attempt_id, attempt + 1,
                        status)  # fmt: skip
            if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                # The controller refuses this request (bad signature, unknown door): a
                # repeat would be refused too.
                self.journal.finish(attempt_id, "webhook", f"refused {status}")
                return False
            if attempt < self.cfg.retries:
                self.sleep(delay)
                delay *= 2
        log.error("door webhook for attempt %s not delivered; left pending", attempt_id)
        return False

    def close(self) -> None:
        self.journal.close()
