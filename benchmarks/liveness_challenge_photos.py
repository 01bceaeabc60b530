"""The challenge on photographs (AT&T, LFW): a two-photo "puppet" that follows the prompts.

Per person, the most frontal photo (by dlib's yaw) is the resting pose and every photo
turned by at least 10 degrees (AT&T) or 15 (LFW) from it is a turn. The puppet shows the
resting photo, switches to the turned one a reaction time (uniform 0.3-0.7 s) after the
turn prompt and back after "face the camera": a one-step attempt on a real random
schedule. Its recording is then replayed against another schedule (a replay that does
not follow). YuNet runs on three noisy copies of each photo, cycled frame by frame.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.detect import Face, NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.liveness.challenge import Challenge, ChallengeConfig
from training.datasets import data_root

FPS = 10.0
BLANK = np.zeros((8, 8, 3), np.uint8)


def _faces(path: Path, det, pose, att: bool, rng) -> tuple[list[Face], float] | None:
    """YuNet faces of three noisy copies of the photo, and dlib's yaw."""
    from training.measure.head_pose import estimate_pose

    im = cv2.imread(str(path)) if att else load_image(path)
    if att:  # 92x112: upscale so both detectors see a usable face
        im = cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    try:
        face = det.primary(im)
        faces = []
        for _ in range(3):
            noisy = np.clip(im + rng.normal(0, 2, im.shape), 0, 255).astype(np.uint8)
            faces.append(det.primary(noisy))
    except NoFaceError:
        return None
    yaw = estimate_pose(pose.landmarker.landmarks(im, face.int_box()), im.shape[:2]).yaw
    return faces, yaw


def puppet(ch: Challenge, rest: list[Face], turned: list[Face], rng) -> list[Face]:
    """Drive ``ch`` with the two photos, switching after each prompt; return the frames."""
    shown, cur, switch_at, seen = [], rest, None, 0
    for i in range(int(ch.cfg.time_limit_s * FPS)):
        t = i / FPS
        if len(ch.log) > seen:
            seen = len(ch.log)
            switch_at = (ch.log[-1][0] + rng.uniform(0.3, 0.7), ch.log[-1][1])
        if switch_at is not None and t >= switch_at[0]:
            cur, switch_at = (rest if switch_at[1] == "back" else turned), None
        face = cur[i % 3]
        shown.append(face)
        if ch.add(t, BLANK, face) is not None:
            break
    ch.finish()
    return shown


def photo_protocol(cfg: ChallengeConfig, lfw_people: int, det, rng) -> dict:
    """Cooperative one-step attempts and their replays, per source."""
    from training.measure.head_pose import HeadPoseEstimator

    pose, root = HeadPoseEstimator(), data_root()
    people = {f"att/{d.name}": (sorted(d.glob("*.pgm")), True, 10.0)
              for d in sorted((root / "att_faces").glob("s*"))}  # fmt: skip
    lfw = [d for d in sorted((root / "lfw").iterdir()) if len(list(d.glob("*.jpg"))) >= 8]
    for d in lfw[:lfw_people]:
        people[f"lfw/{d.name}"] = (sorted(d.glob("*.jpg"))[:12], False, 15.0)
    one = ChallengeConfig(**{**cfg.__dict__, "steps": 1})
    res: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for k, (name, (paths, att, deg)) in enumerate(sorted(people.items())):
        got = [g for g in (_faces(p, det, pose, att, rng) for p in paths) if g is not None]
        if len(got) < 2:
            continue
        rest = min(got, key=lambda g: abs(g[1]))
        src = name.split("/")[0]
        for j, (faces, yaw) in enumerate(got):
            dy = yaw - rest[1]
            if abs(dy) < deg:
                continue
            side = "turn_left" if dy > 0 else "turn_right"
            seed = k * 1000 + j
            ch = Challenge([side], one, rng=random.Random(seed))
            frames = puppet(ch, rest[0], faces, random.Random(seed))
            res[f"cooperative {src}"][0] += ch.passed
            res[f"cooperative {src}"][1] += 1
            other = Challenge(None, one, rng=random.Random(seed + 500))
            for i, f in enumerate(frames):
                if other.add(i / FPS, BLANK, f) is not None:
                    break
            res[f"replay {src}"][0] += other.finish() == "passed"
            res[f"replay {src}"][1] += 1
    return dict(res)
