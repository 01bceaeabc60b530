"""The edge client: the outbox delivers writes made while the service was down, once."""

from __future__ import annotations

import socket
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
    port, key = _free_port(), nacl.signing.SigningKey.generate()
    running = _start(tmp_path / "kfaar.db", port)
    admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    meta = (("authorization", f"Bearer {ADMIN}"),)
    admin.RegisterDevice(
        auth_pb2.RegisterDeviceRequest(device_id="cam", verify_key=key.verify_key.encode()),
        metadata=meta,
    )
    token = admin.CreateAppToken(auth_pb2.CreateAppTokenRequest(app_name="a"), metadata=meta).token
    cfg = ClientConfig(
        f"127.0.0.1:{port}",
        token,
        "cam",
        deadline_s=0.5,
        attempts=4,
        backoff_s=0.05,
        backoff_max_s=0.5,
    )
    client = AuthClient(cfg, key, Outbox(tmp_path / "outbox.db"))
    enroll = auth_pb2.EnrollRequest(subject_id="s-1", templates=[_template(1)])
    assert client.send_or_queue("Enroll", enroll).templates_stored == 1

    running.stop(0)  # the service goes down mid-run
    queued = [auth_pb2.EnrollRequest(subject_id=f"s-{i}", templates=[_template(i)]) for i in (2, 3)]
    assert all(client.send_or_queue("Enroll", q) is None for q in queued)
    assert len(client.outbox.pending()) == 2
    assert client.deliver() == 0  # still down: nothing lost, nothing sent

    running = _start(tmp_path / "kfaar.db", port)  # back, same database
    try:
        assert client.deliver() == 2
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
