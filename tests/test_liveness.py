"""Passive PAD on the edge: the shipped ONNX pair, crops, fusion, simulated attacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.assets import asset_path
from edge_agent.face.detect import Face, FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.liveness.attacks import simulate
from edge_agent.liveness.pad import MODEL_DIR, PassiveLiveness, crop_box, crops, fuse_scores
from training.liveness.real_data import (
    bpcer_threshold,
    load_manifest,
    materialise,
    read_bytes,
    video_attempts,
)


@pytest.fixture(scope="module")
def pad() -> PassiveLiveness:
    return PassiveLiveness("fp32")


@pytest.fixture(scope="module")
def faces(sample_photos: list[Path]) -> list[tuple[np.ndarray, Face]]:
    det = FaceDetector()
    return [(im, det.primary(im)) for im in (load_image(p) for p in sample_photos)]


def test_manifest_names_source_licence_and_matching_hashes() -> None:
    root = asset_path(MODEL_DIR)
    m = json.loads((root / "manifest.json").read_text())
    assert m["source"]["repo"].endswith("minivision-ai/Silent-Face-Anti-Spoofing")
    assert len(m["source"]["commit"]) == 40 and m["source"]["license"] == "Apache-2.0"
    for entry in m["files"].values():
        assert hashlib.sha256((root / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    assert (Path(__file__).parent.parent / "docs/licenses").glob("minifasnet*Apache-2.0.txt")
    assert m["scales"] == [2.7, 4.0] and m["live_class"] == 1


def test_crop_widens_the_box_and_stays_inside_the_frame() -> None:
    # A 100 px box in the middle of a 640x480 frame, widened 2.7 times: 270 px, centred.
    assert crop_box((480, 640), (270, 190, 100, 100), 2.7) == (185, 105, 455, 375)
    # Near the corner the crop shifts back inside instead of leaving the frame.
    x0, y0, x1, y1 = crop_box((480, 640), (0, 0, 100, 100), 2.7)
    assert (x0, y0) == (0, 0) and x1 - x0 == 270
    # A box too large for the scale: the scale shrinks to what the frame holds.
    x0, y0, x1, y1 = crop_box((200, 200), (50, 50, 100, 100), 4.0)
    assert min(x0, y0) >= 0 and max(x1, y1) <= 199


def test_crops_are_bgr_0_to_255_at_80px(faces) -> None:
    image, face = faces[0]
    out = crops(image, face, (2.7, 4.0))
    assert [c.shape for c in out] == [(3, 80, 80)] * 2
    assert all(c.dtype == np.float32 and c.max() > 1.5 and c.max() <= 255 for c in out)


def test_bona_fide_sample_faces_pass_and_simulated_attacks_mostly_fail(pad, faces) -> None:
    live = [pad.score(im, f) for im, f in faces]
    assert min(live) >= pad.threshold  # every bundled photo counts as a live capture here
    det, rng = FaceDetector(), np.random.default_rng(3)
    for kind in ("print", "screen"):
        frames = [simulate(kind, im, rng) for im, _ in faces[::2]]  # 12 people, simulated
        scores = [pad.score(fr, det.primary(fr)) for fr in frames]
        accepted = sum(s >= pad.threshold for s in scores)
        assert accepted <= 2, (kind, np.round(scores, 3))
        assert np.median(scores) < np.median(live) / 4


def test_int8_agrees_with_fp32_on_live_faces(pad, faces) -> None:
    int8 = PassiveLiveness("int8")
    assert int8.version.endswith(":int8") and pad.version.endswith(":fp32")
    a = np.array([pad.score(im, f) for im, f in faces])
    b = np.array([int8.score(im, f) for im, f in faces])
    assert np.mean((a >= pad.threshold) == (b >= int8.threshold)) >= 0.9


def test_fusion_is_the_median_and_needs_a_frame(pad) -> None:
    assert fuse_scores([0.9, 0.1, 0.8]) == pytest.approx(0.8)
    assert fuse_scores([0.99, 0.01, 0.02]) == pytest.approx(0.02)  # one live-looking glint
    res = pad.result([])
    assert not res.passed and "no frame" in res.reason()
    ok = pad.result([0.95, 0.9, 0.97])
    assert ok.passed and ok.method == "passive-minifasnet" and ok.frames == 3


def test_bad_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        PassiveLiveness("fp16")


def test_real_sample_manifest_is_complete_and_consistent() -> None:
    samples = load_manifest()
    assert len({(s.repo, s.path) for s in samples}) == len(samples)  # no duplicates
    assert all(s.licence and s.note for s in samples)
    kinds = {s.attack_type for s in samples if s.label == "attack"}
    assert "video-replay" in kinds and any(s.label == "bona fide" and s.is_video for s in samples)
    # the media are never committed: no manifest path exists inside the repository
    root = Path(__file__).parent.parent
    assert not any((root / s.path).exists() for s in samples)


def _tiny_video(path: Path, n: int) -> None:
    """Write ``n`` 32x32 frames whose grey level encodes their index (8 levels apart)."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(n):
        out.write(np.full((32, 32, 3), 8 * i, np.uint8))
    out.release()


def test_real_samples_verified_by_hash_and_videos_cut_into_attempts(tmp_path) -> None:
    _tiny_video(tmp_path / "clip.avi", 30)
    data = (tmp_path / "clip.avi").read_bytes()
    entry = {"repo": "someone/clips", "commit": "a" * 40, "path": "v/clip.avi",
             "sha256": hashlib.sha256(data).hexdigest(), "label": "attack",
             "attack_type": "video-replay", "licence": "none", "note": "synthetic"}  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps({"samples": [entry]}))
    (s,) = load_manifest(tmp_path / "m.json")
    root = tmp_path / "root"
    (root / "someone+clips/v").mkdir(parents=True)
    (root / "someone+clips/v/clip.avi").write_bytes(data)
    path = materialise(root, s, tmp_path / "cache")
    att = video_attempts(path, attempts=4, per_attempt=3)
    idx = [[round(float(f.mean()) / 8) for f in a] for a in att]
    assert idx == [[0, 1, 2], [9, 10, 11], [18, 19, 20], [27, 28, 29]]  # consecutive, spread
    (root / "someone+clips/v/clip.avi").write_bytes(data[:-10] + b"0" * 10)  # altered
    with pytest.raises(ValueError, match="sha256"):
        read_bytes(root, s)
    bad = dict(entry, label="bona fide")  # a bona fide sample with an attack type
    (tmp_path / "bad.json").write_text(json.dumps({"samples": [bad]}))
    with pytest.raises(ValueError, match="label"):
        load_manifest(tmp_path / "bad.json")


def test_bpcer_threshold_keeps_bona_fide_refusals_within_budget() -> None:
    bona = [i / 100 for i in range(100)]  # 100 live scores 0.00 .. 0.99
    th = bpcer_threshold(bona, 0.02)
    assert th == pytest.approx(0.02) and sum(s < th for s in bona) == 2
    assert bpcer_threshold([None] * 3 + bona[:97], 0.02) == 0.0  # no faces use the budget
