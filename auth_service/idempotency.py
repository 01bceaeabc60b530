"""Idempotency keys: a cached reply answers only the request that made it, once, for a while.

A key is scoped to the device that signed the request: another device's key is another
key. A cached reply is bound to the method, the caller's token (role, app and scope) and a
SHA-256 of the request (all of it but the per-attempt proof and the key itself), so a key
reused for anything else is refused, never answered from the cache. Only writes (Enroll,
Rekey, Revoke) are cached, in the same transaction as the write; Verify and Identify are
decided afresh on every call, retries included: a cached decision could outlive a Revoke
or a Rekey.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import grpc
from google.protobuf.message import Message

from auth_service.authz import CALLER
from auth_service.interceptor import CALLER_ROLE
from auth_service.policy import RequestError
from auth_service.store import ReplyConflict, TemplateStore

WRITES = frozenset({"Enroll", "Rekey", "Revoke"})
MAX_KEY_BYTES = 128
DEFAULT_TTL_S = 24 * 3600.0  # how long a write's reply answers retries of it


def check_key(key: str) -> str:
    """Refuse keys that are too long or hold control characters (they end up in the store)."""
    if len(key.encode()) > MAX_KEY_BYTES or not key.isprintable():
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"idempotency_key must be 1 to {MAX_KEY_BYTES} bytes of printable text",
        )
    return key


def request_hash(method: str, request: Message) -> bytes:
    """Hash what a request asks for: the method, who asks (token) and the request body."""
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("proof")  # timestamp, nonce and signature change on every attempt
    body.ClearField("idempotency_key")
    caller = CALLER.get()
    app, scope = (caller.app, caller.scope) if caller is not None else ("", "")
    h = hashlib.sha256(f"{method}\0{CALLER_ROLE.get()}\0{app}\0{scope}\0".encode())
    h.update(body.SerializeToString(deterministic=True))
    return h.digest()


class ReplyCache:
    """Answer retries of writes from the store; refuse keys reused for other requests."""

    def __init__(self, store: TemplateStore, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise ValueError("the idempotency TTL must be positive")
        self.store, self.ttl_s = store, ttl_s

    def write_once(
        self, method: str, request: Message, run: Callable[[], Message], reply_type: type
    ) -> Message:
        """Run a write once per (device, key); a retry gets the first reply."""
        device, key = request.proof.device_id, check_key(request.idempotency_key)
        try:
            raw = self.store.once(
                device,
                key,
                method,
                request_hash(method, request),
                lambda: run().SerializeToString(),
                self.ttl_s,
            )
        except ReplyConflict as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _reused(exc.method)) from None
        return reply_type.FromString(raw)

    def check_read(self, request: Message) -> None:
        """Refuse a read whose key names a cached write of the same device."""
        key = check_key(request.idempotency_key)
        used_for = self.store.reply_method(request.proof.device_id, key, self.ttl_s)
        if used_for is not None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _reused(used_for))


def _reused(method: str) -> str:
    return (
        f"idempotency key already used by this device for a different request ({method}): "
        "send a fresh key with each new request"
    )
