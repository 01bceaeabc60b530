"""Device proofs: signatures over canonical bytes, freshness, replay and cross-method use."""

from __future__ import annotations

import time

import nacl.signing
import pytest

from auth_service.proof import NonceCache, ProofError, sign, verify
from kfaar_pb.v1 import auth_pb2, common_pb2

VERIFY = "/kfaar.v1.AuthService/Verify"


def _request() -> auth_pb2.VerifyRequest:
    probe = common_pb2.Embedding(values=[0.1] * 128, space=common_pb2.EMBEDDING_SPACE_VIRTUAL)
    return auth_pb2.VerifyRequest(subject_id="s-1", probe=probe)


@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def test_a_signed_request_verifies_once(key) -> None:
    req = sign(VERIFY, _request(), "door-1", key)
    nonces = NonceCache()
    verify(VERIFY, req, key.verify_key, nonces)
    with pytest.raises(ProofError, match="replayed"):
        verify(VERIFY, req, key.verify_key, nonces)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda r: setattr(r, "subject_id", "s-2"), "bad signature"),
        (lambda r: r.probe.values.__setitem__(0, 0.2), "bad signature"),
        (lambda r: setattr(r.proof, "device_id", "door-2"), "bad signature"),
        (lambda r: setattr(r.proof, "nonce", b"short"), "16-byte nonce"),
        (lambda r: setattr(r.proof, "timestamp_ms", r.proof.timestamp_ms - 600_000), "stale"),
    ],
)
def test_tampered_requests_are_refused(key, tamper, message: str) -> None:
    req = sign(VERIFY, _request(), "door-1", key)
    tamper(req)
    with pytest.raises(ProofError, match=message):
        verify(VERIFY, req, key.verify_key, NonceCache())


def test_a_signature_is_bound_to_its_method_and_key(key) -> None:
    req = sign(VERIFY, _request(), "door-1", key)
    with pytest.raises(ProofError, match="bad signature"):
        verify("/kfaar.v1.AuthService/Identify", req, key.verify_key, NonceCache())
    other = nacl.signing.SigningKey.generate().verify_key
    with pytest.raises(ProofError, match="bad signature"):
        verify(VERIFY, req, other, NonceCache())


def test_a_forgery_does_not_spend_the_nonce(key) -> None:
    req = sign(VERIFY, _request(), "door-1", key)
    forged = auth_pb2.VerifyRequest()
    forged.CopyFrom(req)
    forged.proof.signature = bytes(64)
    nonces = NonceCache()
    with pytest.raises(ProofError, match="bad signature"):
        verify(VERIFY, forged, key.verify_key, nonces)
    verify(VERIFY, req, key.verify_key, nonces)  # the genuine request still goes through


def test_the_nonce_cache_forgets_after_the_window() -> None:
    cache = NonceCache(window_ms=1000, capacity=10)
    now = int(time.time() * 1000)
    cache.check_and_add("d", b"n" * 16, now)
    cache.check_and_add("d", b"m" * 16, now + 5000)  # evicts the old entry
    cache.check_and_add("d", b"n" * 16, now + 5000)
    for i in range(20):  # bounded memory
        cache.check_and_add("d", bytes([i]) * 16, now + 5000)
    assert len(cache._seen) <= 10
