"""Idempotency keys on a real service: a cached reply answers only the request that made it.

Each test is an attack from issue 13 (item 1): a device replaying its own key onto another
subject, another device reusing a key, huge keys, and a key reused across methods.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import nacl.signing
import numpy as np
import pytest

from auth_service.proof import sign
from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

ADMIN = "admin-secret-token"
MODEL = common_pb2.ModelVersion(name="hpvfg", version="1.0.0")
VIRTUAL = common_pb2.EMBEDDING_SPACE_VIRTUAL


def _unit(seed: int) -> common_pb2.Embedding:
    v = np.random.default_rng(seed).standard_normal(128)
    return common_pb2.Embedding(values=list(v / np.linalg.norm(v)), model=MODEL, space=VIRTUAL)


class Device:
    """A registered device with an app token; signs each call afresh, like a retry does."""

    def __init__(self, port: int, token: str, device_id: str, key: nacl.signing.SigningKey):
        self.stub = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.meta = (("authorization", f"Bearer {token}"),)
        self.device_id, self.key = device_id, key

    def call(self, method: str, request):
        sign(f"/kfaar.v1.AuthService/{method}", request, self.device_id, self.key)
        return getattr(self.stub, method)(request, metadata=self.meta, timeout=10)

    def refused(self, method: str, request) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as exc:
            self.call(method, request)
        return exc.value


@pytest.fixture(params=["sqlite", "postgres"])
def devices(tmp_path: Path, request):
    """A running service with two registered devices of one app: ("cam-1", "cam-2")."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    cfg = ServerConfig(
        tmp_path / "kfaar.db",
        Policy("hpvfg/1.0.0", {VIRTUAL: 0.93}),
        port=0,
        admin_token=ADMIN,
        workers=4,
        db_url=url,
        service_key_file=tmp_path / "pg-service.key" if url else None,
    )
    running = start(cfg)
    admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    meta = (("authorization", f"Bearer {ADMIN}"),)
    grant = auth_pb2.CreateAppTokenRequest(  # Revoke must be granted by name (docs/SECURITY.md)
        app_name="app", methods=["Enroll", "Verify", "Identify", "Rekey", "Revoke"], shared=True
    )
    token = admin.CreateAppToken(grant, metadata=meta)
    out = []
    for name in ("cam-1", "cam-2"):
        key = nacl.signing.SigningKey.generate()
        admin.RegisterDevice(
            auth_pb2.RegisterDeviceRequest(device_id=name, verify_key=key.verify_key.encode()),
            metadata=meta,
        )
        out.append(Device(running.port, token.token, name, key))
    yield running, *out
    running.stop(0)
    running.store.close()


def _verify(subject: str, probe: int, key: str) -> auth_pb2.VerifyRequest:
    return auth_pb2.VerifyRequest(subject_id=subject, probe=_unit(probe), idempotency_key=key)


def test_own_verify_key_replayed_onto_another_subject_gets_no_match(devices) -> None:
    running, cam, _ = devices
    cam.call("Enroll", auth_pb2.EnrollRequest(subject_id="mallory", templates=[_unit(1)]))
    cam.call("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(2)]))
    assert cam.call("Verify", _verify("mallory", 1, "K")).match  # its own face, key K
    audited = len(running.store.audit_log())
    # The same key on a random probe claiming alice: decided afresh, not from the cache.
    assert not cam.call("Verify", _verify("alice", 99, "K")).match
    rows = [r[1:] for r in running.store.audit_log()[audited:]]
    assert ("cam-1", "Verify", "alice", "reject") in rows  # and the alice claim is audited


def test_a_verify_retry_is_decided_afresh_not_from_the_cache(devices) -> None:
    _, cam, _ = devices
    cam.call("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(2)]))
    assert cam.call("Verify", _verify("alice", 2, "V1")).match
    cam.call("Revoke", auth_pb2.RevokeRequest(subject_id="alice"))
    # The same request again (a retry, re-signed): alice is gone, so no match may come back.
    assert cam.refused("Verify", _verify("alice", 2, "V1")).code() == grpc.StatusCode.NOT_FOUND


def test_another_devices_key_never_returns_its_reply(devices) -> None:
    running, cam1, cam2 = devices
    first = auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(2)], idempotency_key="K")
    assert cam1.call("Enroll", first).subject_id == "alice"
    # cam-2 uses the same key for its own write: keys are per device, so it is its own request.
    second = auth_pb2.EnrollRequest(subject_id="bob", templates=[_unit(3)], idempotency_key="K")
    reply = cam2.call("Enroll", second)
    assert reply.subject_id == "bob" and reply.templates_stored == 1
    assert running.store.subject_templates("bob")[1].shape == (1, 128)
    # cam-1's retry still gets its own reply, and alice was enrolled once.
    assert cam1.call("Enroll", first).subject_id == "alice"
    assert running.store.subject_templates("alice")[1].shape == (1, 128)


def test_a_write_key_reused_for_another_request_is_refused(devices) -> None:
    running, cam, _ = devices
    enroll = auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(2)], idempotency_key="K")
    cam.call("Enroll", enroll)
    other = auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(5)], idempotency_key="K")
    err = cam.refused("Enroll", other)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency key" in err.details()
    rekey = auth_pb2.RekeyRequest(subject_id="alice", templates=[_unit(5)], idempotency_key="K")
    assert cam.refused("Rekey", rekey).code() == grpc.StatusCode.INVALID_ARGUMENT
    # Reusing the Enroll key on Verify is a clear refusal, not UNKNOWN and not a cached reply.
    err = cam.refused("Verify", _verify("alice", 2, "K"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Enroll" in err.details()
    assert running.store.subject_templates("alice")[1].shape == (1, 128)


@pytest.mark.parametrize("method", ["Enroll", "Verify"])
def test_long_keys_are_refused(devices, tmp_path: Path, method) -> None:
    running, cam, _ = devices
    big = "k" * 900_000
    if method == "Enroll":
        req = auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(2)], idempotency_key=big)
    else:
        cam.call("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[_unit(2)]))
        req = _verify("alice", 2, big)
    err = cam.refused(method, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "128" in err.details()
    assert len(err.details()) < 200  # the key is not echoed back
    assert cam.refused(method, _replace_key(req, "\x00bad")).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    ok = _replace_key(req, "k" * 128)  # the longest key allowed
    cam.call(method, ok)
    if running.store.__class__.__name__ == "SqliteStore":
        assert (tmp_path / "kfaar.db").stat().st_size < 1_000_000


def _replace_key(req, key: str):
    out = type(req)()
    out.CopyFrom(req)
    out.idempotency_key = key
    return out


def test_cached_replies_expire(tmp_path: Path) -> None:
    from auth_service.store_sqlite import SqliteStore

    store = SqliteStore(tmp_path / "kfaar.db")
    calls = []

    def run() -> bytes:
        calls.append(1)
        return b"reply-%d" % len(calls)

    claim = dict(device="cam-1", key="K", method="Enroll", request_hash=b"h" * 32)
    assert store.once(**claim, run=run, ttl_s=3600, now=1000.0) == b"reply-1"
    assert store.once(**claim, run=run, ttl_s=3600, now=2000.0) == b"reply-1"
    # After the TTL the key is free again, and expired rows are purged from the table.
    assert store.once(**claim, run=run, ttl_s=3600, now=5000.0) == b"reply-2"
    store.once(device="cam-1", key="other", method="Enroll", request_hash=b"h" * 32, run=run,
               ttl_s=3600, now=9000.0)  # fmt: skip
    (n,) = store.db.execute("SELECT COUNT(*) FROM replies").fetchone()
    assert n == 1


def test_bad_ttl_settings_are_clear(tmp_path: Path, capsys, monkeypatch) -> None:
    from edge_agent.cli import main

    args = ["serve", "--insecure", "--db", str(tmp_path / "k.db"), "--idempotency-ttl", "0"]
    assert main(args) == 2
    assert "--idempotency-ttl must be a positive" in capsys.readouterr().err
    monkeypatch.setenv("KFAAR_IDEMPOTENCY_TTL_S", "a day")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--insecure", "--db", str(tmp_path / "k.db")])
    assert exc.value.code == 2 and "idempotency-ttl" in capsys.readouterr().err
