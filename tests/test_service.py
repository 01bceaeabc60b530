"""The gRPC service on a real loopback port: the flow, the auth layers, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import nacl.signing
import numpy as np
import pytest
from authz_kit import ADMIN, THRESHOLD, VIRTUAL, Client, emb, unit
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.index import IndexConfig
from auth_service.proof import sign
from auth_service.ratelimit import Budget, GuessBudgets
from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2


@pytest.fixture
def service(tmp_path: Path, request):
    # Tests may ask for another 1:N index or store with @pytest.mark.parametrize(indirect=True).
    index, store = getattr(request, "param", (IndexConfig(), "sqlite"))
    index = index or IndexConfig()
    cfg = ServerConfig(
        db=tmp_path / "kfaar.db",
        policy=Policy("hpvfg/1.0.0", {VIRTUAL: THRESHOLD}),
        port=0,
        admin_token=ADMIN,
        workers=4,
        guess=GuessBudgets(pair=Budget(4, 1)),  # 4 misses per subject and device an hour
        index=index,
        db_url=request.getfixturevalue("postgres_url") if store == "postgres" else None,
        service_key_file=tmp_path / "pg-service.key" if store == "postgres" else None,
    )
    running = start(cfg)
    admin_channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    admin = auth_pb2_grpc.AdminServiceStub(admin_channel)
    meta = (("authorization", f"Bearer {ADMIN}"),)
    key = nacl.signing.SigningKey.generate()
    admin.RegisterDevice(
        auth_pb2.RegisterDeviceRequest(device_id="door-1", verify_key=key.verify_key.encode()),
        metadata=meta,
    )
    token = admin.CreateAppToken(
        auth_pb2.CreateAppTokenRequest(
            app_name="app", methods=["Enroll", "Verify", "Identify", "Rekey"]
        ),
        metadata=meta,
    ).token
    yield (
        running,
        Client(running.port, token, "door-1", key),
        Client(running.port, ADMIN, "door-1", key),
    )
    running.stop(0)


def code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        fn()
    return exc.value.code()


@pytest.mark.parametrize(
    "service",
    [(IndexConfig(), "sqlite"), (IndexConfig(ann_min_templates=1), "sqlite"), (None, "postgres")],
    ids=["exact", "hnsw", "postgres"],
    indirect=True,
)
def test_enroll_verify_identify_rekey_revoke(service) -> None:
    running, app, admin = service
    a = unit(1)
    near = a + 0.05 * unit(2)
    reply = app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(a)]))
    assert reply.templates_stored == 1
    app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-b", templates=[emb(unit(3))]))
    ok = app.call("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(near)))
    assert ok.match and not ok.HasField("score")  # apps get decisions, not scores
    assert not app.call("Verify", auth_pb2.VerifyRequest(subject_id="s-b", probe=emb(near))).match
    scored = admin.call("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(near)))
    assert scored.HasField("score") and scored.score > THRESHOLD
    found = app.call("Identify", auth_pb2.IdentifyRequest(probe=emb(near), top_k=3))
    assert [c.subject_id for c in found.candidates] == ["s-a"]
    new = unit(4)  # the key holder re-made the template under a new key
    app.call("Rekey", auth_pb2.RekeyRequest(subject_id="s-a", templates=[emb(new)]))
    assert not app.call("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(near))).match
    assert app.call("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(new))).match
    assert not app.call("Identify", auth_pb2.IdentifyRequest(probe=emb(near))).candidates
    found = app.call("Identify", auth_pb2.IdentifyRequest(probe=emb(new)))
    assert [c.subject_id for c in found.candidates] == ["s-a"]
    revoke = auth_pb2.RevokeRequest(subject_id="s-a")  # deleting a subject needs the admin
    assert admin.call("Revoke", revoke).templates_removed == 1
    missing = auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(new))
    assert code(lambda: app.call("Verify", missing)) == grpc.StatusCode.NOT_FOUND
    assert not app.call("Identify", auth_pb2.IdentifyRequest(probe=emb(new))).candidates
    assert all("values" not in str(row) for row in running.store.audit_log())


def test_a_new_model_version_asks_for_rekey(service, tmp_path: Path) -> None:
    running, app, _ = service
    a = unit(1)
    app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(a)]))
    running.stop(0)
    newer = common_pb2.ModelVersion(name="hpvfg", version="1.1.0")
    cfg = ServerConfig(tmp_path / "kfaar.db", Policy("hpvfg/1.1.0", {VIRTUAL: THRESHOLD}), port=0)
    upgraded = start(cfg)  # same database: devices, tokens and old templates are still there
    try:
        app = Client(upgraded.port, app.token, app.device, app.key)
        verify = auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(a, model=newer))
        with pytest.raises(grpc.RpcError) as exc:
            app.call("Verify", verify)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "hpvfg/1.0.0 VIRTUAL only" in exc.value.details()
        assert "re-enroll or rekey" in exc.value.details()
        probe = auth_pb2.IdentifyRequest(probe=emb(a, model=newer))
        assert not app.call("Identify", probe).candidates  # old templates are not searched
        app.call("Rekey", auth_pb2.RekeyRequest(subject_id="s-a", templates=[emb(a, model=newer)]))
        verify = auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(a, model=newer))
        assert app.call("Verify", verify).match
        assert [c.subject_id for c in app.call("Identify", probe).candidates] == ["s-a"]
    finally:
        upgraded.stop(0)


def test_idempotent_enroll_stores_once(service) -> None:
    running, app, _ = service
    req = auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))], idempotency_key="k1")
    app.call("Enroll", req)
    app.call("Enroll", req)  # a retry from the outbox, re-signed with a fresh nonce
    assert running.store.subject_templates("s-a")[1].shape == (1, 128)


def _signed_verify(app: Client, **proof) -> auth_pb2.VerifyRequest:
    req = auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(1)))
    sign("/kfaar.v1.AuthService/Verify", req, app.device, app.key)
    for k, v in proof.items():
        setattr(req.proof, k, v)
    return req


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda app: _signed_verify(app, device_id="door-9"), grpc.StatusCode.UNAUTHENTICATED),
        (lambda app: _signed_verify(app, signature=bytes(64)), grpc.StatusCode.UNAUTHENTICATED),
        (
            lambda app: _signed_verify(app, timestamp_ms=int(time.time() * 1000) - 3_600_000),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (lambda app: auth_pb2.VerifyRequest(subject_id="s-a"), grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=["unknown device", "bad signature", "stale timestamp", "no proof"],
)
def test_bad_proofs_are_refused(service, make, status) -> None:
    _, app, _ = service
    req = make(app)
    assert code(lambda: app.call("Verify", req, signed=False)) == status


def test_a_replayed_request_is_refused(service) -> None:
    _, app, _ = service
    app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))]))
    req = _signed_verify(app)
    app.call("Verify", req, signed=False)
    assert code(lambda: app.call("Verify", req, signed=False)) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("templates", "status"),
    [
        ([emb(np.ones(64) / 8)], grpc.StatusCode.INVALID_ARGUMENT),
        ([emb([float("nan")] * 128)], grpc.StatusCode.INVALID_ARGUMENT),
        ([emb([float("inf")] * 128)], grpc.StatusCode.INVALID_ARGUMENT),
        ([], grpc.StatusCode.INVALID_ARGUMENT),
        (
            [emb(unit(1), model=common_pb2.ModelVersion(name="hpvfg", version="0.9"))],
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            [emb(unit(1), space=common_pb2.EMBEDDING_SPACE_RECOVERED)],
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ],
    ids=["wrong dimension", "NaN", "Inf", "empty batch", "old model", "space not accepted"],
)
def test_bad_templates_are_refused_and_nothing_is_stored(service, templates, status) -> None:
    running, app, _ = service
    req = auth_pb2.EnrollRequest(subject_id="s-a", templates=templates)
    assert code(lambda: app.call("Enroll", req)) == status
    assert running.store.subject_templates("s-a")[1].shape == (0, 128)


def test_oversized_messages_and_missing_tokens(service) -> None:
    running, app, _ = service
    big = auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))] * 3000)
    assert code(lambda: app.call("Enroll", big)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    anonymous = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    assert code(lambda: anonymous.Verify(_signed_verify(app))) == grpc.StatusCode.UNAUTHENTICATED
    admin = auth_pb2_grpc.AdminServiceStub(app.channel)
    req = auth_pb2.CreateAppTokenRequest(app_name="x")
    assert (
        code(lambda: admin.CreateAppToken(req, metadata=app.meta))
        == grpc.StatusCode.UNAUTHENTICATED
    )


def test_failed_verifications_back_off(service) -> None:
    _, app, _ = service
    app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))]))
    for _ in range(4):  # 4 misses, then a lock-out
        assert not app.call(
            "Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(7)))
        ).match
    req = auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(1)))
    assert code(lambda: app.call("Verify", req)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_authenticate_answers_each_probe(service) -> None:
    _, app, _ = service
    app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))]))
    good = auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(1)))
    sign("/kfaar.v1.AuthService/Verify", good, app.device, app.key)
    forged = auth_pb2.VerifyRequest()
    forged.CopyFrom(good)
    forged.proof.nonce = bytes(16)
    ident = auth_pb2.IdentifyRequest(probe=emb(unit(1)), top_k=1)
    sign("/kfaar.v1.AuthService/Identify", ident, app.device, app.key)
    probes = [
        auth_pb2.AuthProbe(verify=good, sequence=1),
        auth_pb2.AuthProbe(verify=forged, sequence=2),
        auth_pb2.AuthProbe(identify=ident, sequence=3),
    ]
    out = list(app.stub.StreamAuthenticate(iter(probes), metadata=app.meta, timeout=10))
    assert [d.sequence for d in out] == [1, 2, 3]
    assert out[0].verify.match
    assert out[1].error_code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert out[2].identify.candidates[0].subject_id == "s-a"


def test_health_is_served(service) -> None:
    running, _, _ = service
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    reply = stub.Check(health_pb2.HealthCheckRequest(service="kfaar.v1.AuthService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_kfaar_serve_runs_serves_metrics_and_drains_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "serve",
            "--insecure",
            "--port",
            "0",
            "--db",
            str(tmp_path / "kfaar.db"),
            "--create",
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert b"kfaar_requests_total" in urllib.request.urlopen(url, timeout=5).read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()


def test_metrics_count_requests_decisions_and_refusals(service) -> None:
    running, app, _ = service
    app.call("Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))]))
    app.call("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(1))))
    app.call("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(2))))
    bad = auth_pb2.EnrollRequest(subject_id="s-b", templates=[])
    code(lambda: app.call("Enroll", bad))
    code(lambda: app.call("Verify", _signed_verify(app, signature=bytes(64)), signed=False))
    reg = running.metrics.registry

    def value(name: str, **labels) -> float:
        return reg.get_sample_value(name, labels) or 0.0

    assert value("kfaar_requests_total", method="Verify", code="OK") == 2
    assert value("kfaar_requests_total", method="Verify", code="UNAUTHENTICATED") == 1
    assert value("kfaar_requests_total", method="Enroll", code="INVALID_ARGUMENT") == 1
    assert value("kfaar_decisions_total", decision="accept") == 1
    assert value("kfaar_decisions_total", decision="reject") == 1
    assert value("kfaar_refusals_total", reason="INVALID_ARGUMENT") == 1
    assert value("kfaar_request_seconds_count", method="Verify") == 3
    text = b"".join(__import__("prometheus_client").generate_latest(reg).splitlines())
    assert b"s-a" not in text  # no subject ids in labels
