"""Development TLS material for ``kfaar fl local --tls``: a CA, a server certificate, node keys.

The CA and the SuperLink's certificate (for ``localhost`` and ``127.0.0.1``) follow
``deploy/tls/make-dev-certs.sh``; each site gets the OpenSSH-format EC (P-384) key pair
that ``deploy/flower/node-key.sh`` makes and that SuperNode authentication requires. These
are for loopback trials only: production keys come from the federation's PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of a development CA, the SuperLink's certificate and the sites' node keys."""

    ca: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]  # OpenSSH private keys; the public key is ``<key>.pub``


def _write(path: Path, data: bytes, private: bool) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(subject: str, key, issuer: x509.Name | None, issuer_key, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = dict(key_cert_sign=True, crl_sign=True, digital_signature=False)
    else:
        usage = dict(key_cert_sign=False, crl_sign=False, digital_signature=True)
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usage,
        ),
        critical=True,
    )
    return builder.sign(issuer_key, hashes.SHA256())


def node_key(path: Path, comment: str = "kfaar-supernode") -> Path:
    """Write an OpenSSH EC (P-384) private key at ``path`` and its public key at ``path.pub``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(path, private, private=True)
    _write(path.with_name(path.name + ".pub"), public + f" {comment}\n".encode(), private=False)
    return path


def make_tls_material(out: Path, sites: int) -> TlsMaterial:
    """Write a dev CA, a loopback server certificate and one node key pair per site to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("kfaar dev CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert("localhost", server_key, ca_cert.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM  # the CA key is never written: no one can sign more
    return TlsMaterial(
        ca=_write(out / "ca.crt", ca_cert.public_bytes(pem), private=False),
        server_cert=_write(out / "server.crt", server_cert.public_bytes(pem), private=False),
        server_key=_write(out / "server.key", _pem_key(server_key), private=True),
        node_keys=tuple(node_key(out / f"site-{i}.key") for i in range(sites)),
    )
