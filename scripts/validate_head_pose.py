"""Validate the head-pose tool (training.measure.head_pose) and print the numbers as tables.

Checks: the PnP solver on exact synthetic projections; in-plane rotations and horizontal
mirrors of real LFW faces; the spread of yaw and pitch within AT&T subjects, who turn their
heads between photos.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from training.datasets import data_root
from training.measure.head_pose import (
    LANDMARK_INDICES,
    MODEL_POINTS,
    HeadPoseEstimator,
    Pose,
    PoseEstimationError,
    camera_matrix,
    detect_face_box,
    estimate_pose,
    pose_error,
    pose_to_rotation,
)

log = logging.getLogger("validate_head_pose")

SOLVER_SIZE = (250, 250)


def project_model(pose: Pose, image_size: tuple[int, int], distance: float) -> np.ndarray:
    """Return 68 landmarks: the model points projected at ``pose``, the rest at their mean."""
    rvec, _ = cv2.Rodrigues(pose_to_rotation(pose))
    tvec = np.array([[0.0], [0.0], [distance]])
    cam = camera_matrix(image_size)
    proj, _ = cv2.projectPoints(MODEL_POINTS, rvec, tvec, cam, np.zeros(4))
    proj = proj.reshape(-1, 2)
    lm = np.tile(proj.mean(axis=0), (68, 1))
    lm[list(LANDMARK_INDICES)] = proj
    return lm


def check_solver() -> dict[str, float]:
    """Recover known poses over a yaw x pitch x roll grid; return the error statistics."""
    errors = []
    grid = itertools.product(range(-40, 41, 5), range(-25, 26, 5), range(-30, 31, 5))
    for yaw, pitch, roll in grid:
        truth = Pose(float(yaw), float(pitch), float(roll))
        est = estimate_pose(project_model(truth, SOLVER_SIZE, 60.0), SOLVER_SIZE)
        errors.append(pose_error(est, truth))
    e = np.array(errors)
    return {"poses": len(e), "max_err": float(e.max()), "mean_err": float(e.mean())}


def rotate_about(image: np.ndarray, centre: tuple[float, float], angle: float) -> np.ndarray:
    """Rotate ``image`` counter-clockwise on screen by ``angle`` degrees about ``centre``."""
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    h, w = image.shape[:2]
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def check_lfw(est: HeadPoseEstimator, paths: list[Path], angles: list[float]) -> dict:
    """Measure roll/yaw/pitch changes under rotation, and sign flips under mirroring."""
    rot_err = defaultdict(list)  # angle -> [(roll err, |dyaw|, |dpitch|)]
    mirror, poses, detected = [], [], 0
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        box = detect_face_box(img)
        if box is None:
            continue
        detected += 1
        base = est.pose(img, box)
        poses.append(base.as_tuple())
        centre = (box[0] + box[2] / 2.0, box[1] + box[3] / 2.0)
        for angle in angles:
            # Reuse the box: it stays centred on the face, and the detector's own limits on
            # tilted faces are not what is measured here.
            p = est.pose(rotate_about(img, centre, angle), box)
            # A counter-clockwise image rotation is a negative roll in this convention.
            droll = (p.roll - base.roll + 180.0) % 360.0 - 180.0
            dyaw, dpitch, _ = pose_error(p, base)
            rot_err[angle].append((abs(droll + angle), dyaw, dpitch))
        flipped = cv2.flip(img, 1)
        fbox = detect_face_box(flipped)
        if fbox is not None:
            m = est.pose(flipped, fbox)
            mirror.append(
                (abs(base.yaw + m.yaw), abs(base.pitch - m.pitch), abs(base.roll + m.roll))
            )
    return {
        "images": len(paths),
        "detected": detected,
        "rotation": {a: np.array(v) for a, v in rot_err.items()},
        "mirror": np.array(mirror),
        "poses": np.array(poses),
    }


def check_att(est: HeadPoseEstimator, att_dir: Path, scale: int = 1) -> dict:
    """Estimate every AT&T image's pose (optionally resized by ``scale``); group by subject."""
    per_subject: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    images = detected = finite = 0
    for path in sorted(att_dir.glob("s*/*.pgm")):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        images += 1
        if scale != 1:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        # AT&T faces are ~50 px wide, below the HOG detector's 80 px window: upsample once.
        box = detect_face_box(gray, upsample=1)
        if box is None:
            continue
        detected += 1
        try:
            pose = est.pose(gray, box)
        except PoseEstimationError as exc:
            log.warning("%s: %s", path, exc)
            continue
        if pose.is_finite():
            finite += 1
            per_subject[path.parent.name].append(pose.as_tuple())
    return {
        "images": images,
        "detected": detected,
        "finite": finite,
        "subjects": per_subject,
        "scale": scale,
    }


def _row(cells: list) -> str:
    return "| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def report(solver: dict, lfw: dict | None, att: dict | None) -> None:
    """Print the results as Markdown tables."""
    print("## Solver (exact projections, yaw -40..40, pitch -25..25, roll -30..30, step 5)\n")
    print("| poses | max error (deg) | mean error (deg) |\n|---|---|---|")
    print(_row([solver["poses"], f"{solver['max_err']:.1e}", f"{solver['mean_err']:.1e}"]))
    if lfw is not None:
        print(f"\n## LFW: {lfw['detected']} of {lfw['images']} images with a detected face\n")
        q = np.percentile(lfw["poses"], [5, 50, 95], axis=0)
        print("| percentile | yaw | pitch | roll |\n|---|---|---|---|")
        for name, row in zip(("5th", "50th", "95th"), q, strict=True):
            print(_row([name, *map(float, row)]))
        print("\n### In-plane rotation about the face centre (same box)\n")
        print(
            "| image rotation (deg, CCW) | n | roll error mean / max | yaw change mean / max "
            "| pitch change mean / max |"
        )
        print("|---|---|---|---|---|")
        for angle, e in sorted(lfw["rotation"].items()):
            cells = [f"{e[:, k].mean():.2f} / {e[:, k].max():.2f}" for k in range(3)]
            print(_row([f"{angle:+g}", len(e), *cells]))
        m = lfw["mirror"]
        print(f"\n### Horizontal mirror (face re-detected: {len(m)} images)\n")
        print("| deg | mean | median | 95th pct | max |\n|---|---|---|---|---|")
        names = ("abs(yaw + yaw_mirror)", "abs(pitch - pitch_mirror)", "abs(roll + roll_mirror)")
        for k, name in enumerate(names):
            col = m[:, k]
            stats = (col.mean(), np.median(col), np.percentile(col, 95), col.max())
            print(_row([name, *map(float, stats)]))
    if att is not None:
        subj = att["subjects"]
        print(
            f"\n## AT&T: {att['detected']} of {att['images']} images with a detected face "
            f"(image scale x{att['scale']}, detector upsampling x2), "
            f"{att['finite']} finite poses, {len(subj)} subjects\n"
        )
        spreads = np.array([np.ptp(np.array(v), axis=0) for v in subj.values() if len(v) >= 2])
        allp = np.concatenate([np.array(v) for v in subj.values()])
        print("| per-subject spread (max - min), deg | yaw | pitch | roll |\n|---|---|---|---|")
        for name, f in (("min", np.min), ("median", np.median), ("max", np.max)):
            print(_row([name, *map(float, f(spreads, axis=0))]))
        print("\n| all images, deg | yaw | pitch | roll |\n|---|---|---|---|")
        for name, f in (("min", np.min), ("median", np.median), ("max", np.max)):
            print(_row([name, *map(float, f(allp, axis=0))]))


def main(argv: list[str] | None = None) -> int:
    """Run the validation and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=data_root(), help="holds lfw/, att_faces/")
    ap.add_argument("--lfw", type=int, default=200, help="LFW images to use (0 skips LFW)")
    ap.add_argument(
        "--angles",
        type=float,
        nargs="+",
        default=[-20.0, -10.0, 10.0, 20.0],
        help="in-plane rotations in degrees, counter-clockwise on screen",
    )
    ap.add_argument("--no-att", action="store_true", help="skip the AT&T check")
    ap.add_argument("--att-scale", type=int, default=1, help="resize AT&T images first")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    start = time.perf_counter()
    solver = check_solver()
    est = HeadPoseEstimator()
    lfw = att = None
    if args.lfw > 0:
        all_paths = sorted((args.data_root / "lfw").glob("*/*.jpg"))
        if not all_paths:
            log.error("no LFW images under %s", args.data_root / "lfw")
            return 1
        # Evenly spaced over the sorted list: many identities, reproducible, no RNG.
        step = max(1, len(all_paths) // args.lfw)
        lfw = check_lfw(est, all_paths[::step][: args.lfw], args.angles)
    if not args.no_att:
        att = check_att(est, args.data_root / "att_faces", args.att_scale)
        if att["images"] == 0:
            log.error("no AT&T images under %s", args.data_root / "att_faces")
            return 1
    report(solver, lfw, att)
    log.info("done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
