"""Per-face measurements: detection, head pose, expression and BRISQUE quality."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.assets import asset_path
from edge_agent.face.align import DLIB_150, align
from edge_agent.face.detect import FaceDetector
from training.evaluation.judges import FaceRef
from training.measure.expression import ExpressionClassifier
from training.measure.head_pose import HeadPoseEstimator, Pose, PoseEstimationError, pose_error

log = logging.getLogger(__name__)


@dataclass
class FaceMeasures:
    """What one image's face measured; the comparison fields are set for anonymized faces."""

    pose: Pose | None
    expression: int
    brisque: float
    detected: bool | None = None
    pose_error: tuple[float, float, float] | None = None
    same_expression: bool | None = None


def iou(a: tuple, b: tuple) -> float:
    """Return the intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class Measurer:
    """Measure faces with the detector, the pose estimator, FER and BRISQUE."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        self.poser = HeadPoseEstimator()
        self.fer = ExpressionClassifier()
        self.brisque = cv2.quality.QualityBRISQUE_create(
            str(asset_path("brisque_model_live.yml", "training")),
            str(asset_path("brisque_range_live.yml", "training")),
        )

    def measure(
        self, image: np.ndarray, ref: FaceRef, against: FaceMeasures | None = None
    ) -> FaceMeasures:
        """Measure the face at ``ref``; with ``against``, compare it with its original."""
        left, top, right, bottom = ref.dlib_box
        box = (left, top, right - left, bottom - top)
        try:
            pose = self.poser.pose(image, box)
        except PoseEstimationError as exc:
            log.debug("no pose: %s", exc)
            pose = None
        # BRISQUE on the face chip, not the frame: the face is what changed (FID too is
        # computed on face crops), and the background would dilute the score.
        chip = align(image, ref.face.landmarks, DLIB_150).chip
        m = FaceMeasures(
            pose=pose,
            expression=int(np.argmax(self.fer.predict(image, box))),
            brisque=float(self.brisque.compute(chip)[0]),
        )
        if against is not None:
            m.detected = any(iou(f.box, ref.face.box) >= 0.3 for f in self.detector.detect(image))
            if pose is not None and against.pose is not None:
                m.pose_error = pose_error(pose, against.pose)
            m.same_expression = m.expression == against.expression
        return m

    @staticmethod
    def summarize(virtual: list[FaceMeasures]) -> dict:
        """Average the comparisons over anonymized faces into the report's fields."""
        errors = np.array([m.pose_error for m in virtual if m.pose_error is not None])
        pose = errors.mean(0) if len(errors) else [None] * 3
        return {
            "detection_rate": float(np.mean([m.detected for m in virtual])),
            "pose_error_yaw": None if pose[0] is None else float(pose[0]),
            "pose_error_pitch": None if pose[1] is None else float(pose[1]),
            "pose_error_roll": None if pose[2] is None else float(pose[2]),
            "pose_measured": len(errors),
            "expression_agreement": float(np.mean([m.same_expression for m in virtual])),
            "brisque_virtual": float(np.mean([m.brisque for m in virtual])),
        }
