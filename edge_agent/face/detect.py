"""Face detection with YuNet: boxes, five landmarks and scores."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.assets import asset_path
from edge_agent.face.image_io import as_bgr

log = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2023mar.onnx"


class NoFaceError(LookupError):
    """Raised when an image holds no usable face."""


@dataclass(frozen=True)
class Face:
    """A detected face in frame coordinates.

    ``landmarks`` are five (x, y) points: the eye on the image's left, the eye on the
    image's right, the nose tip, then the mouth corners in the same left/right order.
    """

    box: tuple[float, float, float, float]  # x, y, w, h
    landmarks: np.ndarray  # (5, 2) float32
    score: float

    @property
    def size(self) -> float:
        return min(self.box[2], self.box[3])

    def int_box(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.box
        return round(x), round(y), round(w), round(h)


@dataclass
class DetectorConfig:
    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    top_k: int = 50
    min_face: int = 16  # faces smaller than this many pixels are dropped, not guessed at
    max_side: int = 1280  # larger frames are detected on a downscaled copy
    min_side: int = 160  # smaller frames are upscaled first: YuNet misses faces filling tiny frames


class FaceDetector:
    """Detect faces with OpenCV's YuNet; one instance may be shared by threads."""

    def __init__(self, config: DetectorConfig | None = None, model: Path | None = None) -> None:
        self.config = config or DetectorConfig()
        self.model = Path(model) if model else asset_path(YUNET_FILE)
        self._local = threading.local()  # cv2.FaceDetectorYN keeps per-call state
        # OpenCV 5's DNN engine warns on every model load.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

    def _net(self) -> cv2.FaceDetectorYN:
        net = getattr(self._local, "net", None)
        if net is None:
            c = self.config
            net = cv2.FaceDetectorYN.create(
                str(self.model), "", (320, 320), c.score_threshold, c.nms_threshold, c.top_k
            )
            self._local.net = net
        return net

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces in ``image``, best score first; an empty list if there are none."""
        image = as_bgr(image)
        h, w = image.shape[:2]
        scale = 1.0
        if max(h, w) > self.config.max_side:
            scale = self.config.max_side / max(h, w)
        elif min(h, w) < self.config.min_side:
            scale = self.config.min_side / min(h, w)
        work = image
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            work = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interp)
        net = self._net()
        net.setInputSize((work.shape[1], work.shape[0]))
        _, rows = net.detect(work)
        faces = []
        for row in [] if rows is None else rows:
            box = tuple(float(v) / scale for v in row[:4])
            landmarks = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            face = Face(box, landmarks, float(row[14]))  # type: ignore[arg-type]
            if face.size >= self.config.min_face:
                faces.append(face)
            else:
                log.debug("dropped a %.0f px face below min_face", face.size)
        return sorted(faces, key=lambda f: -f.score)

    def primary(self, image: np.ndarray) -> Face:
        """Return the main subject: the large face nearest the frame's centre."""
        faces = self.detect(image)
        if not faces:
            raise NoFaceError("no face found")
        return primary_face(faces, image.shape[:2])


def primary_face(faces: list[Face], frame_hw: tuple[int, int]) -> Face:
    """Pick the face a portrait is about: large and central (LFW labels the central face)."""
    if not faces:
        raise NoFaceError("no face found")
    cy, cx = frame_hw[0] / 2, frame_hw[1] / 2

    def cost(f: Face) -> float:
        x, y, w, h = f.box
        offset = np.hypot(x + w / 2 - cx, y + h / 2 - cy)
        return offset / max(f.size, 1.0)

    return min(faces, key=cost)
