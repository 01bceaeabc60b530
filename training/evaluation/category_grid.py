"""Grids of faces by category (pose, mouth, glasses, beard, skin tone, age), real and virtual.

Each row is one category; each face shows its original and its virtual faces under two
keys, cropped around the face so that seams, tint and ghosting are visible. Head pose
(68 landmarks and solvePnP), mouth opening (inner lip gap over mouth width) and skin tone
(the individual typology angle of the cheeks) are measured; glasses, beards and age come
from a hand-picked list (``training/assets/lfw_dev_categories.txt``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymizer import Anonymizer
from edge_agent.assets import asset_path
from edge_agent.face.align import DLIB_150, align
from edge_agent.face.detect import Face, FaceDetector, NoFaceError
from edge_agent.face.image_io import ImageError, load_image
from edge_agent.progress import progress
from training.datasets import identity_of
from training.evaluation.judges import locate
from training.evaluation.keyring import Keyring
from training.measure.head_pose import Landmarker, PoseEstimationError, estimate_pose

log = logging.getLogger(__name__)

MEASURED = ("frontal", "turned head", "open mouth", "dark skin", "light skin")
HAND_PICKED = ("glasses", "beard", "young", "old")
CATEGORIES = ("frontal", "turned head", "open mouth", "glasses", "beard")
CATEGORIES += ("dark skin", "light skin", "young", "old")
TILE = 144
LABEL_WIDTH = 110
# Cheek patches in dlib's 150 px chip (eyes at y 45, mouth at y 102): x0, y0, x1, y1.
CHEEKS = ((30, 68, 52, 90), (98, 68, 120, 90))
MIN_CHROMA = 6.0  # OpenCV Lab units; skin in colour photos measures well above it


@dataclass
class Traits:
    """What the category picker measured on one face."""

    rel: str
    face: Face
    yaw: float
    pitch: float
    mouth_open: float
    skin_ita: float | None  # None on grey-scale photos, whose tone says nothing of the skin


def skin_ita(image: np.ndarray, face: Face) -> float | None:
    """Return the individual typology angle (degrees) of the cheeks: low is dark skin.

    Returns None for photos without colour in the cheeks (grey-scale prints).
    """
    chip = align(image, face.landmarks, DLIB_150).chip
    lab = cv2.cvtColor(chip, cv2.COLOR_BGR2LAB).astype(np.float64)
    patch = np.concatenate([lab[y0:y1, x0:x1].reshape(-1, 3) for x0, y0, x1, y1 in CHEEKS])
    lightness, a, b = np.median(patch, axis=0)
    if np.hypot(a - 128, b - 128) < MIN_CHROMA:
        return None
    return math.degrees(math.atan2(lightness * 100 / 255 - 50, b - 128))


def measure(rels: list[str], root: Path, detector: FaceDetector) -> list[Traits]:
    """Measure pose, mouth opening and skin tone of each face that is found."""
    landmarker = Landmarker()
    out = []
    for rel in progress(rels, desc="traits"):
        try:
            image = load_image(root / rel)
            face = detector.primary(image)
            left, top, right, bottom = locate(image, face).dlib_box
            lm = landmarker.landmarks(image, (left, top, right - left, bottom - top))
            pose = estimate_pose(lm, image.shape[:2])
        except (ImageError, NoFaceError, PoseEstimationError, ValueError) as exc:
            log.debug("traits: skipping %s: %s", rel, exc)
            continue
        gap = np.linalg.norm(lm[66] - lm[62]) / max(np.linalg.norm(lm[54] - lm[48]), 1e-6)
        out.append(Traits(rel, face, pose.yaw, pose.pitch, float(gap), skin_ita(image, face)))
    return out


def read_hand_picked(path: Path | None = None) -> dict[str, list[str]]:
    """Read lines ``category path`` (``#`` comments) into lists per category."""
    path = path or asset_path("lfw_dev_categories.txt", "training")
    picked: dict[str, list[str]] = {c: [] for c in HAND_PICKED}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        category, _, rel = line.partition(" ")
        if category not in picked or not rel.strip():
            raise ValueError(f"{path}:{lineno}: expected '<{'|'.join(HAND_PICKED)}> path'")
        picked[category].append(rel.strip())
    return picked


def pick(traits: list[Traits], hand_picked: dict[str, list[str]], k: int) -> dict[str, list]:
    """Return up to ``k`` faces of distinct people per category, the clearest cases first."""
    by_rel = {t.rel: t for t in traits}
    coloured = [t for t in traits if t.skin_ita is not None]
    ranked = {
        "frontal": sorted(traits, key=lambda t: abs(t.yaw) + abs(t.pitch)),
        "turned head": sorted((t for t in traits if abs(t.yaw) > 25), key=lambda t: -abs(t.yaw)),
        "open mouth": sorted(
            (t for t in traits if t.mouth_open > 0.15), key=lambda t: -t.mouth_open
        ),
        "dark skin": sorted(coloured, key=lambda t: t.skin_ita),
        "light skin": sorted(coloured, key=lambda t: -t.skin_ita),
    }
    for category, rels in hand_picked.items():
        ranked[category] = [by_rel[r] for r in rels if r in by_rel]
    out = {}
    for category in CATEGORIES:
        chosen, people = [], set()
        for t in ranked.get(category, []):
            if identity_of(t.rel) not in people:
                chosen.append(t)
                people.add(identity_of(t.rel))
            if len(chosen) == k:
                break
        out[category] = chosen
    return out


def face_crop(image: np.ndarray, face: Face, size: int = TILE) -> np.ndarray:
    """Return a square crop around the face, 1.8 times its box, resized to ``size``."""
    x, y, w, h = face.box
    side = 1.8 * max(w, h)
    cx, cy = x + w / 2, y + h / 2
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
    # Grey outside the photo, so that it is not mistaken for an artefact of the model.
    return cv2.warpAffine(image, matrix, (size, size), borderValue=(128, 128, 128))


def _label(text: str, width: int, height: int, wrap: bool = False) -> np.ndarray:
    tile = np.full((height, width, 3), 255, np.uint8)
    for i, word in enumerate(text.split() if wrap else [text]):
        cv2.putText(
            tile, word, (6, 24 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA
        )
    return tile


def render(
    chosen: dict[str, list[Traits]], root: Path, anonymizer: Anonymizer, seed: int, k: int
) -> np.ndarray:
    """Return the grid: one row per category, each face as original, key 1, key 2."""
    keys = Keyring(seed)
    header = [_label("", LABEL_WIDTH, 30)]
    for _ in range(k):
        for name in ("original", "key 1", "key 2") if anonymizer.keyed else ("original", "virtual"):
            header.append(_label(name, TILE, 30))
    rows = [np.hstack(header)]
    per_face = 3 if anonymizer.keyed else 2
    for category, faces in progress(list(chosen.items()), desc="grid rows"):
        tiles = [_label(category, LABEL_WIDTH, TILE, wrap=True)]
        for t in faces:
            image = load_image(root / t.rel)
            tiles.append(face_crop(image, t.face))
            names = ("#1", "#2") if anonymizer.keyed else ("",)
            for suffix in names:
                key = keys.key(identity_of(t.rel) + suffix) if anonymizer.keyed else None
                tiles.append(face_crop(anonymizer.anonymize(image, t.face, key), t.face))
        missing = k - len(faces)
        tiles += [np.full((TILE, TILE, 3), 255, np.uint8)] * (missing * per_face)
        rows.append(np.hstack(tiles))
    return np.vstack(rows)
