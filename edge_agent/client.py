"""The edge agent's gRPC client: signed requests, deadlines, retries, and a durable outbox.

Every request is signed by the device key right before each attempt (a fresh nonce and
timestamp per attempt) and carries an idempotency key, so a retry after a lost reply is
applied once. Writes that cannot reach the service (enroll, rekey, revoke) wait in a
bounded SQLite outbox and are delivered, exactly once, when the service is back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import nacl.signing
from google.protobuf.message import Message

from auth_service.proof import sign
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
QUEUEABLE = {"Enroll": auth_pb2.EnrollRequest, "Rekey": auth_pb2.RekeyRequest,
             "Revoke": auth_pb2.RevokeRequest}  # fmt: skip


class OutboxFull(RuntimeError):
    """The outbox holds its maximum; the edge refuses new writes rather than lose old ones."""


@dataclass
class ClientConfig:
    target: str  # host:port
    token: str  # app bearer token
    device_id: str
    ca: Path | None = None  # None: plaintext (loopback only)
    cert: Path | None = None  # client certificate and key, for mTLS
    key: Path | None = None
    deadline_s: float = 5.0
    attempts: int = 4
    backoff_s: float = 0.2  # first retry delay; doubles up to backoff_max_s
    backoff_max_s: float = 5.0


class Outbox:
    """Requests waiting for the service, in order, in SQLite (survives restarts)."""

    def __init__(self, path: Path | str, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, method TEXT NOT NULL, "
            "request BLOB NOT NULL, created REAL NOT NULL, refused TEXT)"
        )
        self.lock = threading.Lock()

    def put(self, method: str, request: Message) -> None:
        with self.lock:
            (n,) = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            if n >= self.capacity:
                raise OutboxFull(f"outbox holds {n} requests; deliver them first")
            self.db.execute(
                "INSERT INTO outbox (method, request, created) VALUES (?, ?, ?)",
                (method, request.SerializeToString(), time.time()),
            )

    def pending(self) -> list[tuple[int, str, Message]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT id, method, request FROM outbox WHERE refused IS NULL ORDER BY id"
            ).fetchall()
        return [(i, m, QUEUEABLE[m].FromString(r)) for i, m, r in rows]

    def remove(self, row_id: int) -> None:
        with self.lock:
            self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def refuse(self, row_id: int, reason: str) -> None:
        """Keep a request the service refused for good, out of the queue, for an operator."""
        with self.lock:
            self.db.execute("UPDATE outbox SET refused = ? WHERE id = ?", (reason, row_id))


def open_channel(
    target: str,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    options: list[tuple[str, int]] | None = None,
) -> grpc.Channel:
    """Open a channel: plaintext without ``ca``, TLS with it, mTLS with ``cert`` and ``key``."""
    if ca is None:
        return grpc.insecure_channel(target, options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, creds, options)


class AuthClient:
    def __init__(
        self,
        cfg: ClientConfig,
        signing_key: nacl.signing.SigningKey,
        outbox: Outbox | None = None,
        interceptors: tuple = (),
    ) -> None:
        self.cfg, self.key, self.outbox = cfg, signing_key, outbox
        self.channel = grpc.intercept_channel(self._channel(), *interceptors)
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {cfg.token}"),)

    def _channel(self) -> grpc.Channel:
        c = self.cfg
        # Reconnect quickly after an outage; calls wait for the channel within their deadline.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(c.backoff_max_s * 1000)),
        ]
        return open_channel(c.target, c.ca, c.cert, c.key, options)

    def call(self, method: str, request: Message) -> Message:
        """Sign and send with a deadline; retry transient failures with exponential backoff."""
        if hasattr(request, "idempotency_key") and not request.idempotency_key:
            request.idempotency_key = uuid.uuid4().hex
        delay = self.cfg.backoff_s
        for attempt in range(1, self.cfg.attempts + 1):
            sign(f"/kfaar.v1.AuthService/{method}", request, self.cfg.device_id, self.key)
            try:
                return getattr(self.stub, method)(
                    request,
                    metadata=self.metadata,
                    timeout=self.cfg.deadline_s,
                    wait_for_ready=True,
                )
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.cfg.attempts:
                    raise
                log.info("%s: %s, retry %d in %.1f s", method, exc.code().name, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.cfg.backoff_max_s)
        raise RuntimeError("unreachable")  # pragma: no cover

    def stream(self, probes):
        """Run StreamAuthenticate: sign each probe's request as it is sent; yield decisions."""

        def signed():
            for probe in probes:
                kind = probe.WhichOneof("request")
                req = getattr(probe, kind)
                sign(
                    f"/kfaar.v1.AuthService/{kind.capitalize()}", req, self.cfg.device_id, self.key
                )
                yield probe

        yield from self.stub.StreamAuthenticate(signed(), metadata=self.metadata)

    def send_or_queue(self, method: str, request: Message) -> Message | None:
        """Send a write now, or queue it when the service is unreachable; None if queued."""
        if method not in QUEUEABLE or self.outbox is None:
            return self.call(method, request)
        request.idempotency_key = request.idempotency_key or uuid.uuid4().hex
        try:
            return self.call(method, request)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            self.outbox.put(method, request)
            log.warning("%s queued: the service is unreachable (%s)", method, exc.code().name)
            return None

    def deliver(self) -> int:
        """Send queued writes in order; stop at the first that still cannot be delivered."""
        sent = 0
        for row_id, method, request in self.outbox.pending() if self.outbox else ():
            try:
                self.call(method, request)
            except grpc.RpcError as exc:
                if exc.code() in RETRYABLE:
                    break
                log.error("the service refused queued %s: %s", method, exc.details())
                self.outbox.refuse(row_id, f"{exc.code().name}: {exc.details()}")
                continue
            self.outbox.remove(row_id)
            sent += 1
        return sent

    def close(self) -> None:
        self.channel.close()
