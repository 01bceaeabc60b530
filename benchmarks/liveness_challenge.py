"""Active challenge: cooperative pass rate and attack pass rate on real photographs.

Labels come from a measure the challenge does not use: dlib's 68 landmarks (head yaw by
solvePnP, eye aspect ratio, mouth width over eye width), so the challenge's own YuNet
geometry is not graded against itself.

- Cooperative live attempts: per person, the most frontal photo is the neutral pose (two
  frames), then each photo of the same person that shows the action by the dlib labels is
  held for four frames (camera noise between frames). AT&T (10 photos per person, small
  turns, expressions, eyes closed) and LFW people with many photos (larger turns).
- Still photo, moved by hand: every photo, twelve frames of random drift, rotation,
  perspective tilt, scaling, motion blur and light change, asked each action.
- Replayed video that does not follow the challenge: each cooperative sequence replayed
  when another action is asked; and sweeps (a left and a right turn in one video).

Run: python benchmarks/liveness_challenge.py [--lfw-people 60] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.liveness.attacks import hand_moved
from edge_agent.liveness.challenge import ACTIONS, Challenge, ChallengeConfig
from training.datasets import data_root

FPS = 8.0


def _ear(p: np.ndarray) -> float:
    d = np.linalg.norm
    return (d(p[1] - p[5]) + d(p[2] - p[4])) / (2 * d(p[0] - p[3]))


def labelled(paths: list[Path], det, pose_est, att: bool) -> list[dict]:
    """Detect and label each photo with dlib's yaw, eye aspect ratio and mouth width."""
    from training.measure.head_pose import estimate_pose

    out = []
    for p in paths:
        im = cv2.imread(str(p)) if att else load_image(p)
        if att:  # 92x112: upscale so both detectors see a usable face
            im = cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        try:
            face = det.primary(im)
        except NoFaceError:
            continue
        lm = pose_est.landmarker.landmarks(im, face.int_box())
        ear = (_ear(lm[36:42]) + _ear(lm[42:48])) / 2
        mouth = np.linalg.norm(lm[54] - lm[48]) / np.linalg.norm(lm[45] - lm[36])
        yaw = estimate_pose(lm, im.shape[:2]).yaw
        out.append({"path": str(p), "image": im, "yaw": yaw, "ear": ear, "mouth": mouth})
    return out


def cooperative(photos: list[dict], turn_deg: float) -> list[tuple[str, list]]:
    """(action, [neutral, target]) pairs a person really performed, by dlib's labels."""
    mouth = np.median([q["mouth"] for q in photos])  # neutral: frontal, usual mouth width
    base = min(photos, key=lambda r: abs(r["yaw"]) + 50 * abs(r["mouth"] - mouth))
    out = []
    for r in photos:
        if r is base:
            continue
        dy = r["yaw"] - base["yaw"]
        if dy >= turn_deg:
            out.append(("turn_left", [base, r]))
        elif dy <= -turn_deg:
            out.append(("turn_right", [base, r]))
        elif abs(dy) < 5 and r["mouth"] >= 1.12 * base["mouth"]:
            out.append(("smile", [base, r]))
        elif abs(dy) < 5 and r["ear"] <= 0.6 * base["ear"]:
            out.append(("blink", [base, r]))
    return out


def frames_of(seq: list[dict], rng) -> list[np.ndarray]:
    """Neutral for two frames, each target held for four; camera noise on every frame."""
    out = []
    for i, r in enumerate(seq):
        for _ in range(2 if i == 0 else 4):
            noisy = r["image"].astype(np.float32) + rng.normal(0, 2, r["image"].shape)
            out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def run(action: str, frames: list[np.ndarray], det, cfg: ChallengeConfig) -> bool:
    ch = Challenge(action, cfg)
    for i, fr in enumerate(frames):
        try:
            ch.add(i / FPS, fr, det.primary(fr))
        except NoFaceError:
            continue
    return ch.finish() == "passed"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lfw-people", type=int, default=60, help="LFW people with 8+ photos")
    p.add_argument("--stills", type=int, default=200, help="photos used as still attacks")
    p.add_argument("--turn", type=float, default=ChallengeConfig.turn, help="turn threshold")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    cfg = ChallengeConfig(turn=a.turn)
    from training.measure.head_pose import HeadPoseEstimator

    det, pose, rng = FaceDetector(), HeadPoseEstimator(), np.random.default_rng(21)
    people: dict[str, list[dict]] = {}
    for d in sorted((data_root() / "att_faces").glob("s*")):
        people[f"att/{d.name}"] = labelled(sorted(d.glob("*.pgm")), det, pose, att=True)
    lfw = [d for d in sorted((data_root() / "lfw").iterdir()) if len(list(d.glob("*.jpg"))) >= 8]
    for d in lfw[: a.lfw_people]:
        people[f"lfw/{d.name}"] = labelled(sorted(d.glob("*.jpg"))[:12], det, pose, att=False)
    coop = defaultdict(lambda: [0, 0])
    replay = defaultdict(lambda: [0, 0])
    for name, photos in people.items():
        turn_deg = 10.0 if name.startswith("att/") else 15.0
        for action, seq in cooperative(photos, turn_deg):
            src = name.split("/")[0]
            frames = frames_of(seq, rng)
            coop[(src, action)][0] += run(action, frames, det, cfg)
            coop[(src, action)][1] += 1
            for other in ACTIONS:
                if other != action:
                    replay[f"{action} video, {other} asked"][0] += run(other, frames, det, cfg)
                    replay[f"{action} video, {other} asked"][1] += 1
        turns = {act: seq for act, seq in cooperative(photos, 10.0) if act.startswith("turn")}
        if len(turns) == 2:  # a video from the neutral pose sweeping left, then right
            base, left, right = turns["turn_left"][0], turns["turn_left"][1], turns["turn_right"][1]
            sweep = frames_of([base, left, right], rng)
            for act in ("turn_left", "turn_right"):
                replay["sweep left+right"][0] += run(act, sweep, det, cfg)
                replay["sweep left+right"][1] += 1
    stills = defaultdict(lambda: [0, 0])
    pool = [r for photos in people.values() for r in photos]
    order = rng.permutation(len(pool))[: a.stills]
    for i in order:
        frames = hand_moved(pool[i]["image"], 12, rng)
        for action in ACTIONS:
            stills[action][0] += run(action, frames, det, cfg)
            stills[action][1] += 1
    w = sys.stdout.write
    w("| attempts | passed / n |\n|---|---|\n")
    res = {}
    for (src, act), (k, n) in sorted(coop.items()):
        w(f"| cooperative {act} ({src}) | {k}/{n} ({k / n:.0%}) |\n")
        res[f"cooperative {act} ({src})"] = [k, n]
    for act, (k, n) in sorted(stills.items()):
        w(f"| still photo moved by hand, {act} asked | {k}/{n} |\n")
        res[f"still {act}"] = [k, n]
    for what, (k, n) in sorted(replay.items()):
        w(f"| replay: {what} | {k}/{n} |\n")
        res[f"replay {what}"] = [k, n]
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
