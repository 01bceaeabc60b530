"""The edge client: the outbox delivers writes made while the service was down, once."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import nacl.signing
import numpy as np
import pytest

from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from edge_agent.client import AuthClient, ClientConfig, Outbox, OutboxFull
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

ADMIN = "admin-token"
VIRTUAL = common_pb2.EMBEDDING_SPACE_VIRTUAL
MODEL = common_pb2.ModelVersion(name="hpvfg", version="1.0.0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template(seed: int) -> common_pb2.Embedding:
    v = np.random.default_rng(seed).standard_normal(128)
    return common_pb2.Embedding(values=list(v / np.linalg.norm(v)), space=VIRTUAL, model=MODEL)


def _start(db: Path, port: int):
    cfg = ServerConfig(db, Policy("hpvfg/1.0.0", {VIRTUAL: 0.93}), port=port, admin_token=ADMIN)
    return start(cfg)


def test_writes_made_while_the_service_is_down_arrive_exactly_once(tmp_path: Path) -> None:
    running, port, client = _service_and_client(
        tmp_path, deadline_s=0.5, attempts=4, backoff_max_s=0.5
    )
    enroll = auth_pb2.EnrollRequest(subject_id="s-1", templates=[_template(1)])
    assert client.send_or_queue("Enroll", enroll).templates_stored == 1

    running.stop(0)  # the service goes down mid-run
    queued = [auth_pb2.EnrollRequest(subject_id=f"s-{i}", templates=[_template(i)]) for i in (2, 3)]
    assert all(client.send_or_queue("Enroll", q) is None for q in queued)
    assert len(client.outbox.pending()) == 2
    assert client.deliver() == 0  # still down: nothing lost, nothing sent

    running = _start(tmp_path / "kfaar.db", port)  # back, same database
    try:
        # The channel reconnects with back-off, and a loaded machine may need a few passes.
        delivered, give_up = 0, time.monotonic() + 15
        while delivered < 2 and time.monotonic() < give_up:
            delivered += client.deliver()
        assert delivered == 2
        assert client.deliver() == 0
        for i in (1, 2, 3):
            assert running.store.subject_templates(f"s-{i}")[1].shape == (1, 128)
        # A reply lost in transit: the same request again is applied once.
        client.call("Enroll", queued[0])
        assert running.store.subject_templates("s-2")[1].shape == (1, 128)
    finally:
        running.stop(0)


def test_the_outbox_is_bounded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", capacity=1)
    box.put("Enroll", auth_pb2.EnrollRequest(subject_id="a"))
    with pytest.raises(OutboxFull):
        box.put("Enroll", auth_pb2.EnrollRequest(subject_id="b"))


def _service_and_client(tmp_path: Path, **cfg):
    """A running service on a fixed port, a registered device, and its client with an outbox."""
    port, key = _free_port(), nacl.signing.SigningKey.generate()
    running = _start(tmp_path / "kfaar.db", port)
    admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    meta = (("authorization", f"Bearer {ADMIN}"),)
    admin.RegisterDevice(
        auth_pb2.RegisterDeviceRequest(device_id="cam", verify_key=key.verify_key.encode()),
        metadata=meta,
    )
    req = auth_pb2.CreateAppTokenRequest(app_name="a", methods=["Enroll", "Rekey", "Revoke"])
    token = admin.CreateAppToken(req, metadata=meta).token
    settings = {"backoff_s": 0.05, "backoff_max_s": 0.3, **cfg}
    client = AuthClient(
        ClientConfig(f"127.0.0.1:{port}", token, "cam", **settings),
        key,
        Outbox(tmp_path / "outbox.db"),
    )
    return running, port, client


def test_a_write_never_overtakes_an_older_queued_one(tmp_path: Path) -> None:
    running, port, client = _service_and_client(tmp_path, deadline_s=0.5)
    client.send_or_queue("Enroll", auth_pb2.EnrollRequest(subject_id="x", templates=[_template(1)]))
    running.stop(0)
    assert client.send_or_queue("Revoke", auth_pb2.RevokeRequest(subject_id="x")) is None
    running = _start(tmp_path / "kfaar.db", port)  # back, with the Revoke still queued
    try:
        newer = auth_pb2.EnrollRequest(subject_id="x", templates=[_template(2)])
        reply = None
        for _ in range(50):  # the channel may still be reconnecting: the write then waits
            reply = reply or client.send_or_queue("Enroll", newer)
            if client.queued() == 0:
                break
            client.deliver()
        # The older Revoke went first: x holds exactly the newer template.
        stored = running.store.subject_templates("x")[1]
        expected = np.asarray(newer.templates[0].values, np.float32)
        assert stored.shape == (1, 128) and np.allclose(
            stored[0], expected / np.linalg.norm(expected)
        )
    finally:
        running.stop(0)


def test_a_write_queues_at_once_while_the_service_is_down(tmp_path: Path) -> None:
    import time

    # The defaults: a 5 s deadline and 4 attempts kept each queued write waiting about 21 s.
    running, _, client = _service_and_client(tmp_path)
    running.stop(0)
    started = time.monotonic()
    req = auth_pb2.EnrollRequest(subject_id="x", templates=[_template(1)])
    assert client.send_or_queue("Enroll", req) is None
    assert time.monotonic() - started < 3.0
    assert client.queued() == 1


def test_a_refused_write_raises_and_is_not_kept(tmp_path: Path) -> None:
    running, _, client = _service_and_client(tmp_path)
    try:
        bad = auth_pb2.EnrollRequest(subject_id="x", templates=[])
        with pytest.raises(grpc.RpcError) as exc:
            client.send_or_queue("Enroll", bad)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.outbox.counts() == (0, 0)
    finally:
        running.stop(0)


def test_queued_writes_are_delivered_in_the_background(tmp_path: Path) -> None:
    import time

    running, port, client = _service_and_client(tmp_path, deadline_s=0.5)
    running.stop(0)
    client.start_delivery()
    try:
        for i in range(3):
            req = auth_pb2.EnrollRequest(subject_id=f"s-{i}", templates=[_template(i)])
            assert client.send_or_queue("Enroll", req) is None
        running = _start(tmp_path / "kfaar.db", port)
        deadline = time.monotonic() + 20
        while client.queued() and time.monotonic() < deadline:  # nobody calls deliver()
            time.sleep(0.05)
        assert client.queued() == 0
        assert all(running.store.subject_templates(f"s-{i}")[1].shape == (1, 128) for i in range(3))
    finally:
        client.close()
        running.stop(0)
