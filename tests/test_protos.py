"""The committed gRPC stubs are current with proto/ and importable."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install kfaar[dev])")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "kfaar_pb").rglob("*_pb2*"))
    committed = sorted(p.relative_to(REPO) for p in (REPO / "kfaar_pb").rglob("*_pb2*"))
    assert fresh == committed, "run: python scripts/gen_protos.py"
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (REPO / rel).read_bytes(), (
            f"{rel} is stale: run python scripts/gen_protos.py"
        )


def test_stubs_import_and_round_trip() -> None:
    from kfaar_pb.v1 import common_pb2

    msg = common_pb2.Embedding(
        values=[0.5, -0.25],
        space=common_pb2.EMBEDDING_SPACE_VIRTUAL,
        model=common_pb2.ModelVersion(name="hpvfg", version="1.0.0"),
    )
    back = common_pb2.Embedding.FromString(msg.SerializeToString())
    assert list(back.values) == [0.5, -0.25] and back.model.version == "1.0.0"


# The only byte fields on the wire: device proof material and public keys, each of a
# fixed small size that the service checks. Nothing else could smuggle an image or a key.
ALLOWED_BYTES = {
    "kfaar.v1.DeviceProof.nonce",
    "kfaar.v1.DeviceProof.signature",
    "kfaar.v1.RegisterDeviceRequest.verify_key",
    "kfaar.v1.RegisterDeviceRequest.cert_sha256",  # a 32-byte digest of a public certificate
    # The service's own signed statement, made by the service from ids the device sent or
    # already knows (auth_service/access_grant.py); replies only, never read from a device.
    "kfaar.v1.VerifyReply.access_grant",
    "kfaar.v1.IdentifyReply.access_grant",
}


def test_no_message_has_room_for_an_image_or_a_key() -> None:
    from google.protobuf.descriptor import FieldDescriptor

    from kfaar_pb.v1 import auth_pb2, common_pb2

    seen = []
    for module in (auth_pb2, common_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                name = field.full_name
                seen.append(name)
                if field.type == FieldDescriptor.TYPE_BYTES:
                    assert name in ALLOWED_BYTES, f"{name} is a bytes field"
                for word in ("image", "frame", "chip", "pixel", "secret", "subject_key"):
                    assert word not in field.name, f"{name} looks like it carries {word}"
    assert "kfaar.v1.Embedding.values" in seen and len(seen) > 30
