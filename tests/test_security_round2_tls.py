"""Issue 20, exercised over TLS and mTLS: a certificate admits a channel, never a caller.

The same take-over and forgery attempts as tests/test_security_round2.py, on a real
loopback service that requires client certificates (deploy/tls/make-dev-certs.sh).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import nacl.signing
import pytest
from authz_kit import Client, Site, code, emb, unit

from auth_service.server import TLSFiles
from kfaar_pb.v1 import auth_pb2

REPO = Path(__file__).resolve().parent.parent
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    subprocess.run([REPO / "deploy/tls/make-dev-certs.sh", out], check=True, capture_output=True)
    return out


def _creds(pki: Path, cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / "client.key").read_bytes() if cert else None,
        (pki / "client.crt").read_bytes() if cert else None,
    )


@pytest.fixture
def site(pki: Path, tmp_path: Path):
    tls = TLSFiles(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    s = Site(tmp_path / "kfaar.db", tls=tls, creds=_creds(pki))
    yield s
    s.stop()


def test_a_same_scope_camera_cannot_take_over_a_subject_over_mtls(site: Site) -> None:
    owner = site.client("door-a", "hq")
    alice = [unit(i) for i in range(3)]
    owner.enroll("alice", *alice)
    rogue = site.client("door-b", "hq", methods=["Enroll", "Verify", "Identify", "Rekey", "Revoke"])
    mine = unit(99)
    add = auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(mine)])
    assert code(lambda: rogue.call("Enroll", add)) == DENIED
    rekey = auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(mine)])
    assert code(lambda: rogue.call("Rekey", rekey)) == DENIED
    assert code(lambda: rogue.call("Revoke", auth_pb2.RevokeRequest(subject_id="alice"))) == DENIED
    assert sum(rogue.verify("alice", mine) for _ in range(3)) == 0
    assert all(owner.verify("alice", v) for v in alice)


def test_a_valid_client_certificate_is_no_credential_of_its_own(site: Site) -> None:
    owner = site.client("door-a", "hq")
    owner.enroll("alice", unit(1))
    # The certificate opens the channel; without a token or with a forged one it gets nothing.
    for token in ("", "not-a-token"):
        stranger = Client(site.running.port, token, owner.device, owner.key, site.creds)
        assert code(lambda s=stranger: s.verify("alice", unit(1))) in (
            grpc.StatusCode.UNAUTHENTICATED,
            DENIED,
        )
    # The owner's token on a request signed by another device key is refused too.
    forged_key = nacl.signing.SigningKey.generate()
    thief = Client(site.running.port, owner.token, owner.device, forged_key, site.creds)
    assert code(lambda: thief.verify("alice", unit(1))) in (
        grpc.StatusCode.UNAUTHENTICATED,
        DENIED,
    )
    assert owner.verify("alice", unit(1))


def test_without_a_client_certificate_the_handshake_fails(site: Site, pki: Path) -> None:
    owner = site.client("door-a", "hq")
    bare = Client(site.running.port, owner.token, owner.device, owner.key, _creds(pki, False))
    # NOTES.md: a missing client certificate fails the TLS handshake, so gRPC says UNAVAILABLE.
    assert code(lambda: bare.verify("alice", unit(1))) == grpc.StatusCode.UNAVAILABLE
