"""Detection, alignment and paste-back on real faces, and the defined results for odd input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.face.align import (
    ARCFACE_112,
    DLIB_150,
    align,
    paste_back,
    similarity_transform,
    soft_mask,
)
from edge_agent.face.detect import DetectorConfig, FaceDetector, NoFaceError, primary_face
from edge_agent.face.image_io import ImageError, load_image


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def lfw_images(sample_photos: list[Path]) -> list[np.ndarray]:
    return [load_image(f) for f in sample_photos[:20]]


def test_finds_one_face_per_lfw_portrait(detector: FaceDetector, lfw_images: list) -> None:
    for image in lfw_images:
        face = detector.primary(image)
        _, _, w, h = face.box
        assert 40 < w < 200 and 40 < h < 220
        left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
        # Landmark order: image-left eye first, and the mouth below the nose below the eyes.
        assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_blank_and_noise_frames_have_no_face(detector: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    for frame in (
        np.zeros((240, 320, 3), np.uint8),
        rng.integers(0, 255, (240, 320, 3), dtype=np.uint8),
    ):
        assert detector.detect(frame) == []
        with pytest.raises(NoFaceError):
            detector.primary(frame)


def test_several_faces_are_all_found_and_primary_is_central(
    detector: FaceDetector, lfw_images: list
) -> None:
    a, b, c = (cv2.resize(im[40:210, 40:210], (120, 120)) for im in lfw_images[:3])
    canvas = np.full((200, 520, 3), 90, np.uint8)
    for i, face in enumerate((a, b, c)):
        canvas[40:160, 20 + i * 170 : 140 + i * 170] = face
    faces = detector.detect(canvas)
    assert len(faces) == 3
    centre = primary_face(faces, canvas.shape[:2])
    assert 190 < centre.box[0] + centre.box[2] / 2 < 330


def test_tiny_faces_are_dropped_not_guessed(lfw_images: list) -> None:
    face = cv2.resize(lfw_images[0][40:210, 40:210], (60, 60))
    canvas = np.full((400, 400, 3), 120, np.uint8)
    canvas[170:230, 170:230] = face
    assert len(FaceDetector().detect(canvas)) == 1
    strict = FaceDetector(DetectorConfig(min_face=80))
    assert strict.detect(canvas) == []


def test_grayscale_input_is_accepted(detector: FaceDetector, sample_photos: list[Path]) -> None:
    # An AT&T-sized frame (92x112 grayscale), made from a shipped LFW photo.
    gray = cv2.imread(str(sample_photos[3]), cv2.IMREAD_GRAYSCALE)[20:250, 40:210]
    gray = cv2.resize(gray, (92, 112), interpolation=cv2.INTER_AREA)
    assert gray.ndim == 2
    faces = detector.detect(gray)  # a 92x112 frame: upscaled internally for YuNet
    assert len(faces) == 1
    x, _, w, _ = faces[0].box
    assert x >= 0 and x + w <= 92 + 5 and w > 30


def test_non_image_input_is_a_clear_error(detector: FaceDetector) -> None:
    with pytest.raises(ImageError):
        detector.detect(np.zeros((10, 10), np.float64))


def test_similarity_transform_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.full((5, 2), np.nan), np.zeros((4, 2))])
def test_alignment_refuses_degenerate_landmarks(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        align(np.zeros((50, 50, 3), np.uint8), bad)


@pytest.mark.parametrize("spec", [ARCFACE_112, DLIB_150])
def test_alignment_puts_landmarks_on_the_template(
    detector: FaceDetector, lfw_images: list, spec
) -> None:
    residuals = []
    for image in lfw_images:
        face = detector.primary(image)
        aligned = align(image, face.landmarks, spec)
        assert aligned.chip.shape == (spec.size, spec.size, 3)
        mapped = face.landmarks @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
        residuals.append(np.linalg.norm(mapped - spec.points, axis=1).mean() / spec.size)
    # A similarity cannot fit five points exactly: measured 0.5-4% of the chip for frontal
    # faces, 7-9% for the one turned head (George_Allen_0001).
    assert max(residuals) < 0.1 and np.mean(residuals) < 0.04, np.round(residuals, 3)


def test_dlib_geometry_matches_dlibs_own_chips(detector: FaceDetector, lfw_images: list) -> None:
    """Our YuNet-based DLIB_150 chips look to dlib's recognizer like dlib's own chips."""
    from training.evaluation.judges import _dlib_models, dlib_chip, locate

    facerec = _dlib_models()[2]
    cos = []
    for image in lfw_images:
        ref = locate(image, detector.primary(image))
        theirs = np.array(facerec.compute_face_descriptor(dlib_chip(image, ref)))
        ours_chip = cv2.cvtColor(align(image, ref.face.landmarks, DLIB_150).chip, cv2.COLOR_BGR2RGB)
        ours = np.array(facerec.compute_face_descriptor(ours_chip))
        cos.append(theirs @ ours / np.linalg.norm(theirs) / np.linalg.norm(ours))
    assert np.mean(cos) > 0.98


def test_paste_back_restores_an_unchanged_chip(detector: FaceDetector, lfw_images: list) -> None:
    image = lfw_images[1]
    aligned = align(image, detector.primary(image).landmarks, DLIB_150)
    restored = paste_back(image, aligned.chip, aligned.matrix)
    diff = np.abs(restored.astype(int) - image.astype(int))
    assert diff.mean() < 3.0  # two bilinear resamplings of the face region
    assert (diff[:5, :5] == 0).all()  # far outside the mask nothing changes


def test_paste_back_replaces_the_face_only(detector: FaceDetector, lfw_images: list) -> None:
    image = lfw_images[2]
    face = detector.primary(image)
    aligned = align(image, face.landmarks, DLIB_150)
    white = np.full_like(aligned.chip, 255)
    out = paste_back(image, white, aligned.matrix)
    nose = face.landmarks[2].round().astype(int)
    assert (out[nose[1], nose[0]] >= 250).all()
    assert out.shape == image.shape
    assert (out[:3] == image[:3]).all()


def test_soft_mask_is_opaque_inside_and_clear_at_the_corners() -> None:
    mask = soft_mask(150)
    assert mask[75, 75] == pytest.approx(1.0)
    assert mask[0, 0] == 0.0 and mask[149, 149] == 0.0
