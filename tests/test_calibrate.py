"""kfaar calibrate on the shipped sample faces: thresholds per space, written into a bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from auth_service.policy import Policy
from edge_agent.assets import asset_path
from edge_agent.hpvfg import Bundle
from kfaar_pb.v1 import common_pb2
from training.calibrate import calibrate, impostor_scores, write_manifest
from training.chips import build_chip_set, list_images


def test_impostor_scores_take_each_pair_of_different_people_once() -> None:
    emb = np.eye(4, dtype=np.float32)
    emb[1] = emb[0]  # rows 0 and 1: one person's two photos
    scores = impostor_scores(emb, np.array([0, 0, 1, 2]))
    assert len(scores) == 5 and scores.max() == 0  # 6 pairs less the genuine one


def test_calibrate_writes_operating_points_the_service_runs(tmp_path: Path) -> None:
    root = asset_path("sample_faces")
    chips = build_chip_set(root, list_images(root))
    # The sample people have at most two photos: "fuse" one view, the other is held out.
    entries = calibrate(Bundle.load(), chips, 24, 24, keys=2, seed=1, views=1)
    points = entries["operating_points"]
    assert set(points) == {"1e-3", "1e-4"}
    for far in points:
        assert set(points[far]["thresholds"]) == {"KEYED", "VIRTUAL", "RECOVERED"}
        assert set(points[far]["fused_thresholds"]) == {"KEYED", "VIRTUAL"}
        assert all(0 < t <= 1.0001 for t in points[far]["thresholds"].values())
    assert entries["calibration"]["identities"] == 16

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(asset_path("models/hpvfg"), bundle_dir)
    write_manifest(bundle_dir, entries)
    bundle = Bundle.load(bundle_dir)  # the file digests still check
    policy = Policy.from_bundle(bundle, far=1e-4)
    keyed = points["1e-4"]["thresholds"]["KEYED"]
    assert policy.thresholds[common_pb2.EMBEDDING_SPACE_KEYED] == keyed
