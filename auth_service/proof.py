"""Device proofs: Ed25519 signatures over a request's canonical bytes, fresh and unreplayed.

The edge signs; the service verifies. The canonical bytes are the request serialized
deterministically with ``proof.signature`` cleared, prefixed by the full method name, so
a signature for one RPC cannot be replayed against another.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import nacl.exceptions
import nacl.signing
import nacl.utils
from google.protobuf.message import Message

NONCE_BYTES = 16
SIGNATURE_BYTES = 64
DEFAULT_WINDOW_MS = 120_000  # accept device clocks up to two minutes off


class ProofError(Exception):
    """A request's device proof is missing, malformed, stale, replayed or forged."""


def canonical_bytes(method: str, request: Message) -> bytes:
    """Return what a device signs: the method name and the request without its signature."""
    unsigned = type(request)()
    unsigned.CopyFrom(request)
    unsigned.proof.ClearField("signature")
    return method.encode() + b"\0" + unsigned.SerializeToString(deterministic=True)


def sign(method: str, request: Message, device_id: str, key: nacl.signing.SigningKey) -> Message:
    """Fill ``request.proof`` (device id, time, fresh nonce) and sign it in place."""
    request.proof.device_id = device_id
    request.proof.timestamp_ms = int(time.time() * 1000)
    request.proof.nonce = nacl.utils.random(NONCE_BYTES)
    request.proof.ClearField("signature")
    request.proof.signature = key.sign(canonical_bytes(method, request)).signature
    return request


class NonceCache:
    """Remember nonces for the time window; a nonce seen twice in it is a replay."""

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = 1_000_000) -> None:
        self.window_ms, self.capacity = window_ms, capacity
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, device_id: str, nonce: bytes, now_ms: int) -> None:
        """Record a nonce, or raise ProofError if it was already used within the window."""
        key = device_id.encode() + b"\0" + nonce
        with self._lock:
            while self._seen and (
                len(self._seen) >= self.capacity
                or next(iter(self._seen.values())) < now_ms - 2 * self.window_ms
            ):
                self._seen.popitem(last=False)
            if key in self._seen:
                raise ProofError("replayed nonce")
            self._seen[key] = now_ms


class StoredNonces:
    """Spend nonces in the store: a replay is refused after a restart, and on any replica.

    A nonce must be remembered as long as a request carrying it could still pass the
    freshness check: its timestamp is within ``window_ms`` of the service clock, so at
    most two windows after it was first seen.
    """

    def __init__(self, store, window_ms: int = DEFAULT_WINDOW_MS) -> None:
        self.store, self.window_ms = store, window_ms

    def check_and_add(self, device_id: str, nonce: bytes, now_ms: int) -> None:
        """Record a nonce, or raise ProofError if it was already spent."""
        if not self.store.spend_nonce(device_id, nonce, now_ms + 2 * self.window_ms, now_ms):
            raise ProofError("replayed nonce")


def verify(
    method: str,
    request: Message,
    verify_key: nacl.signing.VerifyKey,
    nonces: NonceCache | StoredNonces,
    now_ms: int | None = None,
) -> None:
    """Check the proof's shape, freshness, signature and nonce; raise ProofError if bad."""
    proof = request.proof
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if len(proof.nonce) != NONCE_BYTES or len(proof.signature) != SIGNATURE_BYTES:
        raise ProofError(f"proof needs a {NONCE_BYTES}-byte nonce and a 64-byte signature")
    if abs(now_ms - proof.timestamp_ms) > nonces.window_ms:
        raise ProofError(f"stale timestamp ({(now_ms - proof.timestamp_ms) / 1000:+.0f} s)")
    try:
        verify_key.verify(canonical_bytes(method, request), proof.signature)
    except nacl.exceptions.BadSignatureError:
        raise ProofError("bad signature") from None
    # Only a correctly signed request may spend a nonce, so forgeries cannot block one.
    nonces.check_and_add(proof.device_id, proof.nonce, now_ms)
