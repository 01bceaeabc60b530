"""A real service on loopback with one edge device registered and its settings in the env."""

from __future__ import annotations

from pathlib import Path

import grpc

from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from edge_agent.hpvfg import Bundle
from edge_agent.keystore import Keystore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

ADMIN = "admin"
SECRET = bytes(range(32))  # the device secret the keystore derives its keys from


def start_edge_site(tmp_path: Path, monkeypatch, methods: list[str]):
    """Start a service, register camera cam-1, make a token for ``methods``; set $KFAAR_*."""
    keys = Keystore.create(tmp_path / "ks.json", device_secret=SECRET)
    policy = Policy.from_bundle(Bundle.load())
    running = start(ServerConfig(tmp_path / "db", policy, port=0, admin_token=ADMIN))
    admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    meta = (("authorization", f"Bearer {ADMIN}"),)
    vk = keys.signing_key().verify_key.encode()
    admin.RegisterDevice(
        auth_pb2.RegisterDeviceRequest(device_id="cam-1", verify_key=vk), metadata=meta
    )
    req = auth_pb2.CreateAppTokenRequest(app_name="door", methods=methods)
    token = admin.CreateAppToken(req, metadata=meta).token
    (tmp_path / "secret").write_bytes(SECRET)
    for k, v in {
        "KFAAR_SERVER": f"127.0.0.1:{running.port}",
        "KFAAR_DEVICE_ID": "cam-1",
        "KFAAR_APP_TOKEN": token,
        "KFAAR_KEYSTORE": str(tmp_path / "ks.json"),
        "KFAAR_DEVICE_SECRET_FILE": str(tmp_path / "secret"),
        "KFAAR_OUTBOX": str(tmp_path / "outbox.db"),
        "KFAAR_EDGE_MODELS": str(tmp_path / "edge-models"),
    }.items():
        monkeypatch.setenv(k, v)
    return running
