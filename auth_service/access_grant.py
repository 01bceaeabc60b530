"""Door access grants: the service's signed word that one attempt was accepted, for a while.

A door controller that trusts the camera's webhook is only as safe as the camera. A grant
is made by the service when it accepts a Verify (or finds a match in an Identify) and is
carried back through the camera unchanged; a controller that opens only on a valid grant
no longer takes the camera's word for the decision (deploy/door_controller/).

Format, version 1 (kept free of protobuf so that a controller needs only PyNaCl)::

    grant = signature (64 bytes, Ed25519) || body
    body  = b"kfaar-grant/1\\n" || JSON, UTF-8, keys sorted, no spaces:
            {"attempt", "decision": "accept", "device", "exp", "iat", "kid", "scope",
             "subject", "v": 1}

``attempt`` is the request's idempotency key (else ``nonce:`` and its nonce in hex), which
the edge also sends as the webhook's ``Idempotency-Key``; ``iat`` and ``exp`` are
milliseconds since the Unix epoch; ``kid`` names the verify key (the first 8 bytes of its
SHA-256, in hex). The signing key is derived from the service key (``kfaar-grant-sig``),
so every replica that shares the service key signs grants one verify key checks. Without
a service key (``--allow-unsigned-store``) no grant is made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from auth_service.service_key import ServiceKey

log = logging.getLogger(__name__)

PREFIX = b"kfaar-grant/1\n"
VERSION = 1
DEFAULT_TTL_S = 10.0
MAX_TTL_S = 300.0  # a grant outliving the person at the door is an open door for others


def key_id(verify_key: bytes) -> str:
    """Return the id of a grant verify key: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(verify_key).hexdigest()[:16]


def check_ttl(ttl_s: float) -> float:
    """Return a grant lifetime in seconds, or raise ValueError for one out of range."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"--grant-ttl must be more than 0 and at most {MAX_TTL_S:.0f} seconds")
    return ttl_s


class GrantSigner:
    """Sign access grants with the grant key derived from the store's service key."""

    def __init__(self, store, ttl_s: float = DEFAULT_TTL_S, clock=time.time) -> None:
        self.store, self.ttl_s, self.clock = store, check_ttl(ttl_s), clock

    def issue(self, attempt: str, device: str, scope: str, subject: str) -> bytes:
        """Return a signed grant for one accepted attempt; empty without a service key."""
        service_key: ServiceKey | None = getattr(self.store, "service_key", None)
        if service_key is None:
            return b""
        key = service_key.grant_signing  # derived once per service key
        now_ms = int(self.clock() * 1000)
        claims = {
            "v": VERSION,
            "attempt": attempt,
            "device": device,
            "scope": scope,
            "subject": subject,
            "decision": "accept",
            "iat": now_ms,
            "exp": now_ms + int(self.ttl_s * 1000),
            "kid": key_id(service_key.grant_verify_key),
        }
        body = PREFIX + json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
        return bytes(key.sign(body))  # signature || body
