"""The active challenge on real photographs: real turns pass, moved photos and replays fail."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.liveness.attacks import hand_moved
from edge_agent.liveness.challenge import ACTIONS, Challenge, ChallengeConfig, draw_action, parallax

FPS = 8.0


@pytest.fixture(scope="module")
def det() -> FaceDetector:
    return FaceDetector()


def att(att_dir: Path, name: str) -> np.ndarray:
    im = cv2.imread(str(att_dir / name))  # 92x112 grey: upscaled like the benchmark does
    return cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)


def held(images: list[np.ndarray], rng, hold: int = 4) -> list[np.ndarray]:
    """The first image for two frames, every later one held for ``hold``; camera noise."""
    out = []
    for i, im in enumerate(images):
        for _ in range(2 if i == 0 else hold):
            out.append(np.clip(im + rng.normal(0, 2, im.shape), 0, 255).astype(np.uint8))
    return out


def play(action: str, frames: list[np.ndarray], faces: list) -> str:
    """Run one challenge over ``frames`` (faces found once) at 8 frames a second."""
    ch = Challenge(action)
    for i, (fr, face) in enumerate(zip(frames, faces, strict=True)):
        ch.add(i / FPS, fr, face)
    return ch.finish()


# AT&T people whose photos include a real head turn (by dlib's 68-point pose, not by the
# five points the challenge reads): neutral photo, then the turned ones.
TURNS = [
    ("s1", ["1.pgm", "2.pgm", "5.pgm"], "turn_left"),
    ("s39", ["5.pgm", "8.pgm", "2.pgm"], "turn_left"),
    ("s39", ["5.pgm", "3.pgm"], "turn_right"),
]


@pytest.mark.parametrize(("person", "photos", "action"), TURNS)
def test_a_real_turn_passes_and_fails_every_other_challenge(att_dir, det, person, photos, action):
    rng = np.random.default_rng(0)
    frames = held([att(att_dir, f"{person}/{p}") for p in photos], rng)
    faces = [det.primary(f) for f in frames]
    assert play(action, frames, faces) == "passed"
    for other in ACTIONS:
        if other != action:  # the same video replayed against another random action
            assert play(other, frames, faces) != "passed", other


def test_a_replay_sweeping_both_ways_fails(att_dir, det) -> None:
    rng = np.random.default_rng(1)
    frames = held([att(att_dir, f"s39/{p}") for p in ("5.pgm", "2.pgm", "3.pgm")], rng)
    faces = [det.primary(f) for f in frames]
    assert play("turn_left", frames, faces) == "challenge failed: turned the wrong way"
    assert play("turn_right", frames, faces) == "challenge failed: turned the wrong way"


def test_a_still_photo_moved_by_hand_never_passes(sample_photos, det) -> None:
    rng = np.random.default_rng(2)
    for photo in sample_photos[::4]:
        frames = hand_moved(load_image(photo), 12, rng)
        faces = [det.primary(f) for f in frames]
        for action in ACTIONS:
            assert play(action, frames, faces) != "passed", (photo.name, action)


def test_parallax_ignores_any_flat_motion() -> None:
    lm = np.float32([[40, 50], [80, 50], [60, 72], [45, 92], [75, 92]])
    h = np.float32([[1.1, 0.2, 15], [-0.1, 0.9, -7], [0.001, 0.0005, 1]])  # a perspective move
    moved = cv2.perspectiveTransform(lm[None], h)[0]
    turn, _ = parallax(lm, moved)
    assert abs(turn) < 1e-3
    nose_out = moved.copy()
    nose_out[2, 0] += 10  # the nose alone moves right: a head turning to its own left
    assert parallax(lm, nose_out)[0] > 0.15
    wide = lm.copy()
    wide[3, 0] -= 4
    wide[4, 0] += 4
    assert parallax(lm, wide)[1] == pytest.approx(0.2, abs=1e-3)


def test_time_limit_and_too_few_frames(att_dir, det) -> None:
    im = att(att_dir, "s1/1.pgm")
    late = Challenge("turn_left", ChallengeConfig(time_limit_s=1.0))
    late.add(0.0, im, det.primary(im))
    turned = att(att_dir, "s1/5.pgm")
    assert late.add(2.0, turned, det.primary(turned)).startswith("challenge failed")
    assert Challenge("smile").finish() == "challenge failed: too few frames"
    with pytest.raises(ValueError, match="action"):
        Challenge("nod")


def test_actions_are_drawn_from_the_csprng() -> None:
    seen = Counter(draw_action() for _ in range(400))
    assert set(seen) == set(ACTIONS) and min(seen.values()) > 50
    assert {draw_action(("smile",)) for _ in range(5)} == {"smile"}
