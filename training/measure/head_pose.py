"""Measure head pose (yaw, pitch, roll) from dlib's 68 landmarks and a generic 3-D face.

Frames: the camera frame is OpenCV's (x to the image's right, y down, z away from the
camera). The face model is written in the same frame for a face looking straight into the
camera, so the identity rotation is the frontal, upright pose.

Sign convention of :class:`Pose`, all in degrees, all 0 for a frontal upright face:

- ``yaw`` > 0: the nose points towards the image's right side (the subject turns to their
  own left).
- ``pitch`` > 0: the subject looks up.
- ``roll`` > 0: the face is turned clockwise in the image, as seen on screen.

The head rotation is ``R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` with ``Rx, Ry, Rz`` the
right-handed rotations about the camera axes. Roll is applied last, about the optical axis,
so rotating the image in its plane changes only roll (exactly so about the image centre);
mirroring the image flips the signs of yaw and roll and keeps pitch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from training.recognizer.dlib_format import find_model_file

log = logging.getLogger(__name__)

SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# The 14-point generic face of lincolnhard/head-pose-estimation, with x mirrored: as
# published, its x axis points to the subject's right, which makes the model a mirror image
# of a real head when paired with dlib's indices (every LFW face then fits best facing away
# from the camera). Rows: (dlib index, x right, y up, z
# towards the camera), arbitrary units (about a centimetre).
_MODEL = np.array(
    [
        (17, -6.825897, 6.760612, 4.402142),  # brow, outer end, image left
        (21, -1.330353, 7.122144, 6.903745),  # brow, inner end, image left
        (22, 1.330353, 7.122144, 6.903745),  # brow, inner end, image right
        (26, 6.825897, 6.760612, 4.402142),  # brow, outer end, image right
        (36, -5.311432, 5.485328, 3.987654),  # eye, outer corner, image left
        (39, -1.789930, 5.393625, 4.413414),  # eye, inner corner, image left
        (42, 1.789930, 5.393625, 4.413414),  # eye, inner corner, image right
        (45, 5.311432, 5.485328, 3.987654),  # eye, outer corner, image right
        (31, -2.005628, 1.409845, 6.165652),  # nose wing, image left
        (35, 2.005628, 1.409845, 6.165652),  # nose wing, image right
        (48, -2.774015, -2.080775, 5.048531),  # mouth corner, image left
        (54, 2.774015, -2.080775, 5.048531),  # mouth corner, image right
        (57, 0.000000, -3.116408, 6.097667),  # lower lip, middle
        (8, 0.000000, -7.415691, 4.070434),  # chin
    ]
)
LANDMARK_INDICES: tuple[int, ...] = tuple(int(i) for i in _MODEL[:, 0])
# Into the camera frame of a frontal face: y down, z away from the camera.
MODEL_POINTS: np.ndarray = _MODEL[:, 1:] * np.array([1.0, -1.0, -1.0])

_OUTER_EYES = (LANDMARK_INDICES.index(36), LANDMARK_INDICES.index(45))
_EYE_SPAN = float(np.linalg.norm(np.subtract(*MODEL_POINTS[list(_OUTER_EYES)])))
_NO_DISTORTION = np.zeros(4)


@dataclass(frozen=True)
class Pose:
    """Head orientation in degrees; see the module docstring for the signs."""

    yaw: float
    pitch: float
    roll: float

    def as_tuple(self) -> tuple[float, float, float]:
        """Return ``(yaw, pitch, roll)``."""
        return (self.yaw, self.pitch, self.roll)

    def is_finite(self) -> bool:
        """Return whether all three angles are finite numbers."""
        return all(math.isfinite(a) for a in self.as_tuple())


class PoseEstimationError(RuntimeError):
    """Raised when no rotation with the face towards the camera fits the landmarks."""


def camera_matrix(image_size: tuple[int, int]) -> np.ndarray:
    """Return the pinhole camera assumed for an ``(h, w)`` image: focal = width, centred."""
    h, w = _check_size(image_size)
    return np.array([[w, 0.0, w / 2.0], [0.0, w, h / 2.0], [0.0, 0.0, 1.0]])


def pose_to_rotation(pose: Pose) -> np.ndarray:
    """Return the 3x3 rotation from the face model frame to the camera frame."""
    a, b, c = (math.radians(v) for v in (-pose.pitch, -pose.yaw, pose.roll))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_to_pose(rotation: np.ndarray) -> Pose:
    """Decompose a rotation ``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` into a :class:`Pose`."""
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be 3x3, got shape {r.shape}")
    b = math.atan2(-r[2, 0], math.hypot(r[0, 0], r[1, 0]))
    a = math.atan2(r[2, 1], r[2, 2])
    c = math.atan2(r[1, 0], r[0, 0])
    return Pose(yaw=-math.degrees(b), pitch=-math.degrees(a), roll=math.degrees(c))


def estimate_pose(landmarks68: np.ndarray, image_size: tuple[int, int]) -> Pose:
    """Fit the generic face to 68 landmarks of an ``(h, w)`` image and return its pose."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks contain non-finite values")
    image_points = pts[list(LANDMARK_INDICES)]
    if np.ptp(image_points, axis=0).min() < 1.0:
        raise ValueError("landmarks span less than a pixel; they cannot describe a face")
    cam = camera_matrix(image_size)

    best: tuple[float, np.ndarray] | None = None
    for rvec, tvec in _candidate_solutions(image_points, cam):
        rot, _ = cv2.Rodrigues(rvec)
        # A face turned away from the camera, or behind it, can fit the 2-D points as well
        # as the real one (the depth ambiguity of a near-planar object); reject it.
        if tvec[2, 0] <= 0 or rot[2, 2] <= 0:
            continue
        proj, _ = cv2.projectPoints(MODEL_POINTS, rvec, tvec, cam, _NO_DISTORTION)
        rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - image_points) ** 2, 1))))
        if best is None or rms < best[0]:
            best = (rms, rot)
    if best is None:
        raise PoseEstimationError("no pose with the face towards the camera fits the landmarks")
    log.debug("pose fit: reprojection RMS %.2f px", best[0])
    return rotation_to_pose(best[1])


def _candidate_solutions(image_points: np.ndarray, cam: np.ndarray) -> list[tuple]:
    # Seed Levenberg-Marquardt with a frontal face at the distance the eye span implies, so
    # it starts in the right basin; EPnP + refinement is a second, seed-free opinion.
    eye_px = float(np.linalg.norm(np.subtract(*image_points[list(_OUTER_EYES)])))
    z = cam[0, 0] * _EYE_SPAN / max(eye_px, 1e-6)
    t0 = np.append((image_points.mean(axis=0) - cam[:2, 2]) * z / cam[0, 0], z).reshape(3, 1)
    args = (MODEL_POINTS, image_points, cam, _NO_DISTORTION)
    out = []
    try:
        ok, rvec, tvec = cv2.solvePnP(*args, np.zeros((3, 1)), t0, True, cv2.SOLVEPNP_ITERATIVE)
        if ok:
            out.append((rvec, tvec))
        ok, rvec, tvec = cv2.solvePnP(*args, flags=cv2.SOLVEPNP_EPNP)
        if ok:
            out.append(cv2.solvePnPRefineLM(*args, rvec, tvec))
    except cv2.error as exc:  # degenerate points, e.g. all landmarks on one spot
        log.debug("solvePnP failed: %s", exc)
    return out


def pose_error(pose_a: Pose, pose_b: Pose) -> tuple[float, float, float]:
    """Return absolute ``(dyaw, dpitch, droll)`` in degrees, wrapped into [0, 180]."""
    return tuple(  # type: ignore[return-value]
        abs((a - b + 180.0) % 360.0 - 180.0)
        for a, b in zip(pose_a.as_tuple(), pose_b.as_tuple(), strict=True)
    )


class Landmarker:
    """Find dlib's 68 face landmarks inside a face box."""

    def __init__(self, model_path: str | None = None) -> None:
        import dlib  # optional dependency (kfaar[eval]); imported only when used

        self._dlib = dlib
        path = model_path or str(find_model_file(SHAPE_PREDICTOR_FILE))
        self._predictor = dlib.shape_predictor(path)

    def landmarks(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Return the ``(68, 2)`` float landmarks (x, y) of the face in ``box`` = (x, y, w, h)."""
        img = to_dlib_image(image)
        x, y, w, h = _check_box(box, img.shape[:2])
        rect = self._dlib.rectangle(x, y, x + w - 1, y + h - 1)
        shape = self._predictor(img, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class HeadPoseEstimator:
    """Measure the head pose of the face in a box: landmarks, then a PnP fit."""

    def __init__(self, landmarker: Landmarker | None = None) -> None:
        self.landmarker = landmarker or Landmarker()

    def pose(self, image: np.ndarray, box: tuple[int, int, int, int]) -> Pose:
        """Return the pose of the face in ``box`` = (x, y, w, h) of a BGR or gray image."""
        lm = self.landmarker.landmarks(image, box)
        return estimate_pose(lm, image.shape[:2])

    @staticmethod
    def pose_error(pose_a: Pose, pose_b: Pose) -> tuple[float, float, float]:
        """Return absolute ``(dyaw, dpitch, droll)`` in degrees, wrapped into [0, 180]."""
        return pose_error(pose_a, pose_b)


def to_dlib_image(image: np.ndarray) -> np.ndarray:
    """Return a contiguous uint8 gray or RGB copy of a gray or BGR image for dlib."""
    img = np.asarray(image)
    if img.size == 0:
        raise ValueError("image is empty")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    raise ValueError(f"image must be HxW or HxWx3, got shape {img.shape}")


@cache
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


def detect_face_box(image: np.ndarray, upsample: int = 1) -> tuple[int, int, int, int] | None:
    """Return the largest face box (x, y, w, h) found by dlib's HOG detector, or None."""
    rects = _hog_detector()(to_dlib_image(image), upsample)
    if len(rects) == 0:
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return (r.left(), r.top(), r.width(), r.height())


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) < 2 or min(image_size[0], image_size[1]) <= 0:
        raise ValueError(f"image_size must be a positive (h, w), got {image_size}")
    return int(image_size[0]), int(image_size[1])


def _check_box(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, ...]:
    if len(box) != 4:
        raise ValueError(f"box must be (x, y, w, h), got {box}")
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"box must have a positive size, got {box}")
    # Detector boxes may poke out of the image, but one whose centre is outside cannot
    # frame a face in it.
    cx, cy = x + w / 2.0, y + h / 2.0
    if not (0 <= cx < shape[1] and 0 <= cy < shape[0]):
        raise ValueError(f"box {box} lies outside the {shape[1]}x{shape[0]} image")
    return x, y, w, h
