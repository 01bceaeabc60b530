"""Multi-frame attempts: frame quality with reasons, fusion, and when an attempt closes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.assets import asset_path
from edge_agent.attempts import (
    AttemptConfig,
    AttemptTracker,
    FrameQuality,
    estimate_yaw,
    frame_quality,
    fuse,
)
from edge_agent.face.detect import Face, FaceDetector
from edge_agent.face.image_io import load_image

GOOD = FrameQuality(1.0, None, 100.0, 50.0, 0.0, 0.95)
POOR = FrameQuality(0.0, "too blurred (sharpness 2.0 < 6)", 100.0, 2.0, 0.0, 0.95)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(asset_path("sample_faces") / "Hugh_Grant" / "Hugh_Grant_0005.jpg")


def test_a_sharp_frontal_face_counts_and_poor_frames_are_dropped_with_a_reason(photo) -> None:
    detector = FaceDetector()
    good = frame_quality(photo, detector.primary(photo))
    assert good.reason is None and 0.3 < good.weight <= 1.0

    blurred = cv2.GaussianBlur(photo, (0, 0), 4)
    q = frame_quality(blurred, detector.primary(blurred))
    assert q.weight == 0 and q.reason.startswith("too blurred")

    small = cv2.resize(photo, (60, 60), interpolation=cv2.INTER_AREA)
    q = frame_quality(small, detector.primary(small))
    assert q.weight == 0 and q.reason.startswith("face too small")

    face = detector.primary(photo)
    unsure = Face(face.box, face.landmarks, 0.62)
    assert frame_quality(photo, unsure).reason.startswith("detector unsure")
    turned = face.landmarks.copy()
    turned[2, 0] = turned[1, 0] + 30  # the nose well beyond an eye: the head is turned away
    assert frame_quality(photo, Face(face.box, turned, face.score)).reason.startswith("turned")
    assert abs(estimate_yaw(face.landmarks)) < 35  # a three-quarter portrait


def test_fusion_is_a_weighted_mean_of_unit_vectors() -> None:
    a, b = np.eye(4, dtype=np.float32)[:2]
    assert np.allclose(fuse(np.stack([a, b]), np.array([1.0, 1.0])), (a + b) / np.sqrt(2))
    heavy = fuse(np.stack([2 * a, b]), np.array([3.0, 1.0]))  # scale does not count, weight does
    assert np.isclose(np.linalg.norm(heavy), 1) and heavy @ a > heavy @ b


def face_at(x: float) -> Face:
    return Face((x, 50.0, 100.0, 100.0), np.zeros((5, 2), np.float32), 0.95)


def test_an_attempt_closes_early_when_enough_frames_agree() -> None:
    tracker = AttemptTracker(AttemptConfig(enough_weight=3.0), clock=lambda: 0.0)
    v = np.ones(8, np.float32)
    assert tracker.add("f0", face_at(0), GOOD, v) == []
    assert tracker.add("f1", face_at(5), POOR, None) == []  # dropped, the track goes on
    assert tracker.add("f2", face_at(10), GOOD, v) == []
    (done,) = tracker.add("f3", face_at(12), GOOD, v)
    assert done.closed_by == "enough frames" and done.labels == ["f0", "f2", "f3"]
    assert done.dropped == [("f1", POOR.reason)] and np.isclose(done.weight, 3.0)
    assert tracker.flush() == []


def test_a_lost_face_a_time_out_and_a_too_poor_attempt() -> None:
    now = [0.0]
    tracker = AttemptTracker(AttemptConfig(timeout_s=2.0), clock=lambda: now[0])
    v = np.ones(8, np.float32)
    tracker.add("a0", face_at(0), GOOD, v)
    (lost,) = tracker.add("b0", face_at(400), POOR, None)  # another place: another face
    assert lost.closed_by == "face lost" and lost.usable
    now[0] = 1.0
    assert tracker.no_face() == []  # one missed detection is tolerated
    now[0] = 2.5
    (poor,) = tracker.add("b1", face_at(400), POOR, None)
    assert poor.closed_by == "time-out" and not poor.usable
    assert poor.poor_reason() == "face too poor: too blurred in 2 of 2 frames"
    with pytest.raises(ValueError):
        poor.fused()


def test_an_attempt_fuses_its_three_best_frames() -> None:
    tracker = AttemptTracker(AttemptConfig(enough_weight=99.0), clock=lambda: 0.0)
    frames = np.eye(5, dtype=np.float32)
    for i, w in enumerate([0.3, 0.9, 0.5, 0.8, 0.4]):
        q = FrameQuality(w, None, 100.0, 50.0, 0.0, 0.95)
        tracker.add(f"f{i}", face_at(0), q, frames[i])
    (done,) = tracker.flush()
    probe, views = done.fused()
    assert views == 3 and set(np.flatnonzero(probe > 0)) == {1, 2, 3}
