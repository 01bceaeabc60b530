"""The timed turn challenge: a head that follows passes; replays, stills and early moves fail."""

from __future__ import annotations

import math
import random
from collections import Counter

import cv2
import numpy as np
import pytest

from edge_agent.face.detect import Face, FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.liveness.attacks import hand_moved
from edge_agent.liveness.challenge import (
    ACTIONS,
    Challenge,
    ChallengeConfig,
    draw_sequence,
    parallax,
    replay_pass_chance,
)

FPS = 10.0
# A generic head (cm; x right, y down, z away from the camera): eyes, nose tip, mouth corners.
HEAD = np.float64(
    [[-3.2, -3.5, 0], [3.2, -3.5, 0], [0, 0, -2.6], [-2.6, 3.3, -0.4], [2.6, 3.3, -0.4]]
)
CAMERA = np.float64([[640, 0, 320], [0, 640, 240], [0, 0, 1]])
BLANK = np.zeros((480, 640, 3), np.uint8)  # the challenge reads only the landmarks


def head(yaw: float, pitch: float = 0.0, x: float = 0.0, rng=None) -> Face:
    """Project the head turned ``yaw`` degrees (> 0: its own left) 50 cm from the camera."""
    rvec = cv2.Rodrigues(_rot(yaw, pitch))[0]
    pts, _ = cv2.projectPoints(HEAD, rvec, np.float64([x, 0, 50]), CAMERA, None)
    lm = pts.reshape(5, 2).astype(np.float32)
    if rng is not None:
        lm += rng.normal(0, 0.4, lm.shape).astype(np.float32)  # landmark jitter, pixels
    x0, y0 = lm.min(0) - 30
    return Face((float(x0), float(y0), 120.0, 140.0), lm, 0.9)


def _rot(yaw: float, pitch: float) -> np.ndarray:
    a, b = math.radians(-yaw), math.radians(pitch)  # nose toward the image's right: > 0
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return ry @ rx


def follow(ch: Challenge, rng, react=0.45, angle=25.0, ramp=0.4) -> list[float]:
    """A cooperative person: turns ``react`` s after each prompt, comes back likewise."""
    yaws, target, moving_from, start = [], 0.0, 0.0, None
    for i in range(int(ch.cfg.time_limit_s * FPS)):
        t = i / FPS
        if ch.log and (start is None or ch.log[-1][0] > start[0]):
            when, key = ch.log[-1]
            new = 0.0 if key == "back" else (angle if key == "turn_left" else -angle)
            moving_from, start, target = (yaws[-1] if yaws else 0.0), (when, key), new
        yaw = 0.0
        if start is not None:
            k = min(1.0, max(0.0, (t - start[0] - react) / ramp))  # a 0.4 s turn
            yaw = moving_from + k * (target - moving_from)
        yaws.append(yaw)
        if ch.add(t, BLANK, head(yaw, rng=rng)) is not None:
            break
    ch.finish()
    return yaws


def replay(yaws: list[float], ch: Challenge, rng) -> str:
    """Play a recorded yaw track against ``ch``, whatever it prompts."""
    for i, yaw in enumerate(yaws):
        if ch.add(i / FPS, BLANK, head(yaw, rng=rng)) is not None:
            break
    return ch.finish()


def test_a_head_following_the_prompts_passes() -> None:
    rng = np.random.default_rng(0)
    for seed in range(20):
        ch = Challenge(cfg=ChallengeConfig(), rng=random.Random(seed))
        follow(ch, rng)
        assert ch.passed, (seed, ch.verdict, ch.log)
        assert ch.action.count(",") == 2 and [k for _, k in ch.log].count("back") == 3


def test_a_recorded_follower_replayed_against_another_schedule_fails() -> None:
    rng = np.random.default_rng(1)
    passes = 0
    for seed in range(40):
        rec = Challenge(cfg=ChallengeConfig(), rng=random.Random(seed))
        yaws = follow(rec, rng)
        assert rec.passed
        other = Challenge(cfg=ChallengeConfig(), rng=random.Random(1000 + seed))
        passes += replay(yaws, other, rng) == "passed"
    assert passes == 0
    assert 0 < replay_pass_chance(ChallengeConfig()) < 0.01


def test_the_wrong_way_and_a_too_early_turn_fail() -> None:
    rng = np.random.default_rng(2)
    ch = Challenge(["turn_left"], ChallengeConfig(steps=1), rng=random.Random(3))
    follow(ch, rng, angle=-25.0)  # a right turn when left is asked
    assert ch.verdict == "challenge failed at step 1: turned the wrong way"
    ch = Challenge(["turn_left"], ChallengeConfig(steps=1), rng=random.Random(3))
    follow(ch, rng, react=0.0, ramp=0.05)  # fully turned 0.1 s after the prompt: too soon
    assert ch.verdict == "challenge failed at step 1: moved before the prompt"


def test_motion_before_the_prompt_fails() -> None:
    rng = np.random.default_rng(3)
    ch = Challenge(["turn_left", "turn_right"], rng=random.Random(4))
    for i in range(60):  # turning left from 0.5 s on, without waiting for any prompt
        t = i / FPS
        if ch.add(t, BLANK, head(min(25.0, max(0.0, (t - 0.5) * 60)), rng=rng)):
            break
    assert ch.verdict is not None and "before the prompt" in ch.verdict


def test_holding_still_fails_and_so_does_coming_back_early() -> None:
    rng = np.random.default_rng(4)
    ch = Challenge(["turn_right"], ChallengeConfig(steps=1), rng=random.Random(5))
    assert replay([0.0] * 60, ch, rng).endswith("no reaction to 'turn your head to your right'")
    ch = Challenge(["turn_right"], ChallengeConfig(steps=1), rng=random.Random(5))
    yaws = follow(Challenge(["turn_right"], ChallengeConfig(steps=1), rng=random.Random(5)), rng)
    turned = [i for i, y in enumerate(yaws) if y <= -24]
    quick = yaws[: turned[0] + 2] + [0.0] * 30  # turns on cue but comes straight back
    assert "came back before the prompt" in replay(quick, ch, rng)


@pytest.fixture(scope="module")
def det() -> FaceDetector:
    return FaceDetector()


def test_a_still_photo_moved_by_hand_never_passes(sample_photos, det) -> None:
    rng = np.random.default_rng(5)
    for k, photo in enumerate(sample_photos[::4]):
        frames = hand_moved(load_image(photo), 40, rng)
        ch = Challenge(["turn_left"], ChallengeConfig(steps=1), rng=random.Random(k))
        for i, fr in enumerate(frames):
            if ch.add(i / FPS, fr, det.primary(fr)) is not None:
                break
        assert ch.finish() != "passed", photo.name


def test_parallax_ignores_any_flat_motion() -> None:
    lm = np.float32([[40, 50], [80, 50], [60, 72], [45, 92], [75, 92]])
    h = np.float32([[1.1, 0.2, 15], [-0.1, 0.9, -7], [0.001, 0.0005, 1]])  # a perspective move
    moved = cv2.perspectiveTransform(lm[None], h)[0]
    assert abs(parallax(lm, moved)) < 1e-3
    nose_out = moved.copy()
    nose_out[2, 0] += 10  # the nose alone moves right: a head turning to its own left
    assert parallax(lm, nose_out) > 0.15
    # the synthetic head: 20 degrees to its own left reads above the turn threshold
    assert parallax(head(0).landmarks, head(20).landmarks) > ChallengeConfig.turn
    assert parallax(head(0).landmarks, head(-20).landmarks) < -ChallengeConfig.turn
    # stepping 3 cm sideways changes the view a little, far less than a turn
    assert abs(parallax(head(0).landmarks, head(0, x=3).landmarks)) < ChallengeConfig.early / 2


def test_bad_sequences_and_the_csprng() -> None:
    with pytest.raises(ValueError, match="actions"):
        Challenge(["nod"])
    with pytest.raises(ValueError, match="actions"):
        Challenge([])
    assert Challenge().finish() == "challenge failed: too few frames"
    seen = Counter(a for _ in range(200) for a in draw_sequence())
    assert set(seen) == set(ACTIONS) and min(seen.values()) > 200
    assert draw_sequence(("turn_left",), 2) == ["turn_left", "turn_left"]
