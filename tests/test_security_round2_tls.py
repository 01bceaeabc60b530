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


# -- a device bound to its client certificate ----------------------------------------------
def _other_client_cert(pki: Path, out: Path) -> tuple[Path, Path]:
    """Sign a second client certificate with the same CA (another camera's)."""
    key, csr, crt = out / "other.key", out / "other.csr", out / "other.crt"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=out)  # noqa: E731
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=other-camera")  # fmt: skip
    run("openssl", "x509", "-req", "-in", csr, "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
        "-CAcreateserial", "-days", "1", "-out", crt)  # fmt: skip
    return key, crt


def _bind(site: Site, client: Client, cert: Path, scope: str = "hq") -> None:
    from auth_service.admin_cli import cert_fingerprint

    req = auth_pb2.RegisterDeviceRequest(
        device_id=client.device,
        verify_key=client.key.verify_key.encode(),
        scope=scope,
        cert_sha256=cert_fingerprint(cert),
    )
    site.admin.RegisterDevice(req, metadata=(("authorization", "Bearer admin-secret-token"),))


def test_a_device_bound_to_its_certificate_refuses_any_other_channel(
    site: Site, pki: Path, tmp_path: Path
) -> None:
    door = site.client("door-a", "hq")
    door.enroll("alice", unit(1))
    _bind(site, door, pki / "client.crt")
    assert door.verify("alice", unit(1))  # its own certificate: served
    key, crt = _other_client_cert(pki, tmp_path)
    other = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(), key.read_bytes(), crt.read_bytes()
    )
    # The device's key and token, stolen, used from a channel with another valid certificate.
    thief = Client(site.running.port, door.token, door.device, door.key, other)
    unauth = grpc.StatusCode.UNAUTHENTICATED
    assert code(lambda: thief.verify("alice", unit(1))) == unauth  # before: accepted
    probe = auth_pb2.AuthProbe(
        sequence=1, verify=thief.signed("Verify", auth_pb2.VerifyRequest(
            subject_id="alice", probe=emb(unit(1))))
    )  # fmt: skip
    (decision,) = thief.stub.StreamAuthenticate(iter([probe]), metadata=thief.meta, timeout=10)
    assert decision.error_code == unauth.value[0] and "client certificate" in decision.error_message
    site.running.refusals.flush()
    rows = [r for r in site.running.store.audit_rows() if "client certificate" in r[6]]
    assert rows  # audited
    assert door.verify("alice", unit(1))


def test_a_certificate_bound_device_is_refused_on_plaintext(tmp_path: Path, pki: Path) -> None:
    plain = Site(tmp_path / "kfaar.db")
    try:
        door = plain.client("door-a", "hq")
        door.enroll("alice", unit(1))
        _bind(plain, door, pki / "client.crt")
        assert code(lambda: door.verify("alice", unit(1))) == grpc.StatusCode.UNAUTHENTICATED
        bad = auth_pb2.RegisterDeviceRequest(
            device_id="x", verify_key=door.key.verify_key.encode(), cert_sha256=b"short"
        )
        meta = (("authorization", "Bearer admin-secret-token"),)
        assert (
            code(lambda: plain.admin.RegisterDevice(bad, metadata=meta))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    finally:
        plain.stop()


def test_the_fingerprint_is_openssls_and_a_bad_file_is_a_clear_error(
    pki: Path, tmp_path: Path
) -> None:
    from auth_service.admin_cli import cert_fingerprint

    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", pki / "client.crt"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert (
        cert_fingerprint(pki / "client.crt").hex()
        == out.split("=")[1].strip().replace(":", "").lower()
    )
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="not a readable PEM certificate"):
        cert_fingerprint(tmp_path / "bad.pem")
