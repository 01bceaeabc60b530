"""The service reads the bundle's manifest itself, without the edge's code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auth_service.model_manifest import ManifestError, ModelManifest
from auth_service.policy import Policy
from edge_agent.cli import main
from edge_agent.hpvfg import Bundle


def test_the_shipped_manifest_gives_the_edges_version_and_thresholds() -> None:
    served, edge = ModelManifest.load(), Bundle.load()
    assert served.version == edge.version
    assert Policy.from_bundle(served).thresholds == Policy.from_bundle(edge).thresholds


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "not a model bundle"),
        ("{", "not a model bundle"),
        ("[]", "lacks version"),
        (json.dumps({"files": {}}), "lacks version"),
    ],
)
def test_a_bad_bundle_is_refused_clearly(tmp_path: Path, content, why: str, capsys) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=why):
        ModelManifest.load(tmp_path)
    args = ["serve", "--insecure", "--port", "0", "--create", "--db", ":memory:"]
    assert main([*args, "--bundle", str(tmp_path)]) == 2
    assert why in capsys.readouterr().err
