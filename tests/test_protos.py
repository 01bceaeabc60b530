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
