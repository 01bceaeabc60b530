"""Align faces to fixed chip geometries by a similarity transform of five landmarks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.face.image_io import as_bgr


@dataclass(frozen=True)
class ChipSpec:
    """A square chip and where the five landmarks should land in it."""

    name: str
    size: int
    points: np.ndarray  # (5, 2): image-left eye, image-right eye, nose, mouth left, mouth right


# The standard ArcFace/InsightFace template for 112x112 chips.
ARCFACE_112 = ChipSpec(
    "arcface",
    112,
    np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ],
        dtype=np.float32,
    ),
)

# Where YuNet's five points fall, on average, in the chips of dlib.get_face_chip(size=150,
# padding=0.25). Measured on 1,000 LFW faces by scripts/derive_dlib_chip_template.py.
DLIB_150 = ChipSpec(
    "dlib",
    150,
    np.array(
        [
            [46.7015, 44.5418],
            [103.2685, 45.5553],
            [74.9559, 77.4452],
            [50.687, 101.5442],
            [98.6885, 102.2132],
        ],
        dtype=np.float32,
    ),
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Return the 2x3 least-squares similarity (Umeyama 1991) that maps ``src`` onto ``dst``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinity")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("landmarks are degenerate (all at one point)")
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = (sigma * np.diag(sign)).sum() / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


@dataclass(frozen=True)
class AlignedFace:
    """A chip and the 2x3 matrix that maps frame coordinates to chip coordinates."""

    chip: np.ndarray
    matrix: np.ndarray
    spec: ChipSpec


def align(image: np.ndarray, landmarks: np.ndarray, spec: ChipSpec = ARCFACE_112) -> AlignedFace:
    """Warp the face with these five landmarks into a ``spec`` chip."""
    image = as_bgr(image)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks of shape (5, 2), got {landmarks.shape}")
    matrix = similarity_transform(landmarks, spec.points)
    # Zero fill outside the frame, as dlib's extract_image_chip does.
    chip = cv2.warpAffine(
        image,
        matrix,
        (spec.size, spec.size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return AlignedFace(chip, matrix, spec)


def soft_mask(size: int, inset: float = 0.08, feather: float = 0.1) -> np.ndarray:
    """Return a (size, size) float mask: an ellipse over the face that fades to 0 at its rim."""
    mask = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    axes = (round(size * (0.5 - inset)), round(size * (0.5 - inset / 2)))
    cv2.ellipse(mask, (round(c), round(c)), axes, 0, 0, 360, 1.0, -1)
    k = max(3, int(size * feather) | 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def paste_back(
    frame: np.ndarray, chip: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Return ``frame`` with ``chip`` warped back into place through ``matrix`` and blended."""
    frame = as_bgr(frame)
    chip = as_bgr(chip)
    size = chip.shape[0]
    if chip.shape[:2] != (size, size):
        raise ValueError(f"chip must be square, got {chip.shape}")
    mask = soft_mask(size) if mask is None else mask.astype(np.float32)
    inverse = cv2.invertAffineTransform(matrix)
    h, w = frame.shape[:2]
    back = cv2.warpAffine(
        chip, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(
        mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )[..., None]
    out = frame.astype(np.float32) * (1 - alpha) + back.astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
