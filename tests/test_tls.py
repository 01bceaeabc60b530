"""TLS and mTLS on loopback: the right client gets in, others fail the handshake."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.server import ServerConfig, TLSFiles, start
from auth_service.servicer import Policy

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[Path, Path]:
    ours, foreign = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("foreign")
    for d in (ours, foreign):
        subprocess.run([REPO / "deploy/tls/make-dev-certs.sh", d], check=True, capture_output=True)
    return ours, foreign


def _health(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> int:
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mtls(pki, tmp_path: Path, mutual: bool) -> None:
    ours, foreign = pki
    tls = TLSFiles(ours / "server.crt", ours / "server.key", ours / "ca.crt" if mutual else None)
    running = start(
        ServerConfig(tmp_path / "db", Policy("hpvfg/1.0.0", {1: 0.93}), port=0, tls=tls)
    )
    try:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert (
            _health(running.port, ours / "ca.crt", ours / "client.crt", ours / "client.key")
            == serving
        )
        for cert in ([None, None], [foreign / "client.crt", foreign / "client.key"]):
            if not mutual:
                continue
            with pytest.raises(grpc.RpcError) as exc:
                _health(running.port, ours / "ca.crt", *cert)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
        with pytest.raises(grpc.RpcError) as exc:  # a client that does not trust our CA
            _health(running.port, foreign / "ca.crt", ours / "client.crt", ours / "client.key")
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_kfaar_health_checks_like_a_client(pki, tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    ours, _ = pki
    tls = TLSFiles(ours / "server.crt", ours / "server.key", ours / "ca.crt")
    cfg = ServerConfig(tmp_path / "db", Policy("hpvfg/1.0.0", {1: 0.93}), port=0, tls=tls)
    running = start(cfg)
    server = ["health", "--server", f"localhost:{running.port}", "--ca", str(ours / "ca.crt")]
    client = ["--cert", str(ours / "client.crt"), "--key", str(ours / "client.key")]
    try:
        assert main([*server, *client]) == 0
        assert "SERVING" in capsys.readouterr().out
        assert main(server) == 1  # no client certificate: the handshake fails
        assert "not healthy: UNAVAILABLE" in capsys.readouterr().err
        assert main([*server, "--cert", str(tmp_path / "missing.crt")]) == 2
    finally:
        running.stop(0)
    assert main([*server, *client, "--timeout", "0.5"]) == 1  # nobody listens any more
