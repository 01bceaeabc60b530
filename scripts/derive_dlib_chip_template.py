"""Measure where YuNet's five landmarks land in dlib's 150x150 face chips.

dlib aligns its recognizer's input with its own 5-point shape predictor (eye corners and
nose base) and ``get_face_chip(size=150, padding=0.25)``. Our edge pipeline has YuNet's
points instead (eye centres, nose tip, mouth corners). This script finds, for each LFW
face, the exact frame-to-chip transform dlib uses, maps YuNet's points through it, and
averages them into the template ``edge_agent.face.align.DLIB_150``.

Run: python scripts/derive_dlib_chip_template.py --count 1000
"""

from __future__ import annotations

import argparse
import logging
import random

import cv2
import dlib
import numpy as np
from tqdm import tqdm

from edge_agent.face.align import similarity_transform
from edge_agent.face.detect import FaceDetector, NoFaceError
from training.datasets import data_root
from training.recognizer.dlib_format import find_model_file

log = logging.getLogger("derive_dlib_chip_template")


def coordinate_image(h: int, w: int) -> np.ndarray:
    """Return an RGB image whose red and green channels hold each pixel's x and y."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.dstack([xs, ys, np.zeros_like(xs)]).astype(np.uint8)


def dlib_chip_matrix(shape: dlib.full_object_detection, hw: tuple[int, int]) -> np.ndarray:
    """Recover dlib's frame-to-chip affine map by extracting a chip of a coordinate image."""
    coords = dlib.get_face_chip(coordinate_image(*hw), shape, size=150, padding=0.25)
    ys, xs = np.mgrid[0:150, 0:150]
    inside = (coords[..., 0] > 0) & (coords[..., 0] < 255) & (coords[..., 1] > 0)
    inside &= coords[..., 1] < 255
    chip_pts = np.c_[xs[inside], ys[inside], np.ones(inside.sum())]
    # dlib truncates interpolated values to uint8, so each coordinate reads 0.5 low on average.
    frame_pts = coords[inside][:, :2].astype(np.float64) + 0.5
    # Least squares for chip -> frame, then invert.
    sol, *_ = np.linalg.lstsq(chip_pts, frame_pts, rcond=None)
    to_frame = np.vstack([sol.T, [0, 0, 1]])
    return np.linalg.inv(to_frame)[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="LFW faces to measure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    files = sorted((data_root() / "lfw").glob("*/*.jpg"))
    random.Random(args.seed).shuffle(files)
    hog = dlib.get_frontal_face_detector()
    sp5 = dlib.shape_predictor(str(find_model_file("shape_predictor_5_face_landmarks.dat")))
    yunet = FaceDetector()
    mapped = []
    for path in tqdm(files[: args.count], desc="faces"):
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets = hog(rgb, 1)
        try:
            face = yunet.primary(bgr)
        except NoFaceError:
            continue
        if not dets:
            continue
        cx, cy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
        det = min(dets, key=lambda d: np.hypot(d.center().x - cx, d.center().y - cy))
        if np.hypot(det.center().x - cx, det.center().y - cy) > face.box[2] / 3:
            continue  # the two detectors found different faces
        m = dlib_chip_matrix(sp5(rgb, det), rgb.shape[:2])
        mapped.append(face.landmarks @ m[:, :2].T + m[:, 2])
    pts = np.stack(mapped)
    template = pts.mean(0)
    log.info("faces used: %d of %d", len(pts), args.count)
    log.info("template (chip px):\n%s", np.array2string(template, precision=4, separator=", "))
    log.info("per-point std (chip px): %s", np.round(pts.std(0).mean(1), 2))
    # How far our alignment lands from dlib's own: chip-corner displacement in pixels.
    corners = np.array([[0, 0], [149, 0], [0, 149], [149, 149]], np.float64)
    errs = []
    for p in mapped:
        ours = similarity_transform(p, template)  # chip -> our chip
        err = corners @ ours[:, :2].T + ours[:, 2] - corners
        errs.append(np.linalg.norm(err, axis=1).mean())
    log.info(
        "mean chip-corner displacement vs dlib: %.2f px (median %.2f)",
        np.mean(errs),
        np.median(errs),
    )


if __name__ == "__main__":
    main()
