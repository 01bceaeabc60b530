"""The edge agent's gRPC client: signed requests, deadlines, retries, and a durable outbox.

Every request is signed by the device key right before each attempt (a fresh nonce and
timestamp per attempt) and carries an idempotency key, so a retry after a lost reply is
applied once. With an outbox, writes (enroll, rekey, revoke) are queued first and sent in
order (edge_agent/outbox.py): a caller waits at most about one deadline, and what the
service could not take yet is delivered later, exactly once, by the background delivery
thread, the next write, or ``kfaar edge flush``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import nacl.signing
from google.protobuf.message import Message

from auth_service import targets
from auth_service.proof import sign
from edge_agent.outbox import (  # noqa: F401  (Outbox and OutboxFull are imported from here)
    QUEUEABLE,
    REFUSED_FOR_GOOD,
    DeliveryThread,
    Outbox,
    OutboxFull,
)
from kfaar_pb.v1 import auth_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class ClientConfig:
    target: str  # host:port, host1:port,host2:port or dns:///name:port (replicas)
    token: str  # app bearer token
    device_id: str
    ca: Path | None = None  # None: plaintext (loopback only)
    cert: Path | None = None  # client certificate and key, for mTLS
    key: Path | None = None
    deadline_s: float = 5.0
    attempts: int = 4
    backoff_s: float = 0.2  # first retry delay; doubles up to backoff_max_s
    backoff_max_s: float = 5.0


def open_channel(
    target: str,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    options: list[tuple[str, str | int]] | None = None,
) -> grpc.Channel:
    """Open a channel over every replica ``target`` names: plaintext without ``ca``, else TLS.

    ``target`` is ``host:port``, a list ``host1:port,host2:port`` or ``dns:///name:port``
    (auth_service/targets.py): calls are spread round-robin over the replicas that report
    SERVING. mTLS with ``cert`` and ``key``. A malformed target raises ValueError.
    """
    return targets.open_channel(target, ca, cert, key, options)


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
        self._delivering = threading.Lock()  # one delivery pass at a time keeps the order
        self._thread: DeliveryThread | None = None
        self._closed = False

    def _channel(self) -> grpc.Channel:
        c = self.cfg
        # Reconnect quickly after an outage; calls wait for the channel within their deadline.
        # Retries stay in ``call``, which re-signs each attempt: a gRPC-level retry would
        # re-send a spent nonce, which every replica refuses (auth_service/targets.py).
        options: list[tuple[str, str | int]] = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(c.backoff_max_s * 1000)),
        ]
        return open_channel(c.target, c.ca, c.cert, c.key, options)

    def call(
        self, method: str, request: Message, attempts: int | None = None, wait_for_ready=True
    ) -> Message:
        """Sign and send with a deadline; retry transient failures with exponential backoff."""
        if hasattr(request, "idempotency_key") and not request.idempotency_key:
            request.idempotency_key = uuid.uuid4().hex
        delay = self.cfg.backoff_s
        attempts = attempts or self.cfg.attempts
        for attempt in range(1, attempts + 1):
            sign(f"/kfaar.v1.AuthService/{method}", request, self.cfg.device_id, self.key)
            try:
                return getattr(self.stub, method)(
                    request,
                    metadata=self.metadata,
                    timeout=self.cfg.deadline_s,
                    wait_for_ready=wait_for_ready,
                )
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == attempts:
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
        """Queue a write behind older ones and send the queue up to it; None if it waits.

        Returns within about one deadline even while the service is down; a write the
        service refuses for good raises its error and is not kept.
        """
        if method not in QUEUEABLE or self.outbox is None:
            return self.call(method, request)
        request.idempotency_key = request.idempotency_key or uuid.uuid4().hex
        budget = self.cfg.deadline_s
        ours = self._delivering.acquire(timeout=budget)  # else the background pass has it
        try:
            row = self.outbox.put(method, request)  # durable before the first attempt
            # Fail fast: an unreachable service must not hold the caller for a deadline.
            outcome = self._deliver_locked(row, budget, wait=False)[1].get(row) if ours else None
        finally:
            if ours:
                self._delivering.release()
        if isinstance(outcome, grpc.RpcError):
            self.outbox.remove(row)  # the caller hears the refusal; nobody else needs it
            raise outcome
        if outcome is None:
            log.warning("%s queued in the outbox: the service cannot take it now", method)
            if self._thread is not None:
                self._thread.wake.set()
        return outcome

    def deliver(self, wait: bool = True) -> int:
        """Send queued writes in order, one attempt each; stop at the first that must wait.

        With ``wait``, an attempt waits (up to the deadline) for the service to be reachable.
        """
        if self.outbox is None:
            return 0
        with self._delivering:
            return self._deliver_locked(wait=wait)[0]

    def _deliver_locked(
        self, up_to: int | None = None, budget_s: float | None = None, wait: bool = True
    ) -> tuple[int, dict[int, Message | grpc.RpcError]]:
        """Deliver in order (the caller holds the lock): (rows sent, outcome per row tried)."""
        sent, outcomes, start = 0, {}, time.monotonic()
        for row_id, method, request in self.outbox.pending(up_to):
            if budget_s is not None and time.monotonic() - start > budget_s:
                break
            try:
                outcomes[row_id] = self.call(method, request, attempts=1, wait_for_ready=wait)
            except grpc.RpcError as exc:
                if exc.code() not in REFUSED_FOR_GOOD:
                    log.info("outbox: %s waits (%s: %s)", method, exc.code().name, exc.details())
                    break
                log.error("the service refused queued %s: %s", method, exc.details())
                self.outbox.refuse(row_id, f"{exc.code().name}: {exc.details()}")
                outcomes[row_id] = exc
            else:
                self.outbox.remove(row_id)
                sent += 1
        return sent, outcomes

    def queued(self) -> int:
        """Return how many writes wait in the outbox."""
        return self.outbox.counts()[0] if self.outbox else 0

    def flush(self, timeout_s: float) -> tuple[int, int]:
        """Deliver until the outbox is empty or ``timeout_s`` passed: (sent, still queued)."""
        end, delay, sent = time.monotonic() + timeout_s, self.cfg.backoff_s, 0
        while True:
            n = self.deliver()
            sent, left = sent + n, self.queued()
            if left == 0 or time.monotonic() >= end:
                return sent, left
            delay = self.cfg.backoff_s if n else min(delay * 2, self.cfg.backoff_max_s)
            time.sleep(min(delay, max(0.0, end - time.monotonic())))

    def start_delivery(self) -> None:
        """Deliver queued writes in a background thread until ``close``, starting now."""
        if self.outbox is not None and self._thread is None:
            c = self.cfg
            # Each attempt waits (up to the deadline) for the channel to reconnect, so a
            # service that is back is used as soon as the channel sees it.
            self._thread = DeliveryThread(self.deliver, self.queued, c.backoff_s, c.backoff_max_s)
            self._thread.start()

    def close(self) -> None:
        """Stop background delivery (after one last quick pass) and close the channel."""
        if self._thread is not None:
            self._thread.stop(timeout=self.cfg.deadline_s + 1)
            self._thread = None
            budget = self.cfg.deadline_s
            if self._delivering.acquire(timeout=budget):
                try:
                    self._deliver_locked(budget_s=budget, wait=False)
                finally:
                    self._delivering.release()
        if not self._closed:
            self._closed = True
            self.channel.close()
