"""Multi-frame attempts: judge each frame's quality, fuse the frames of one tracked face.

A camera sees a person for a second or more. Instead of one decision per frame, the edge
collects the usable frames of one tracked face into an *attempt*, fuses the templates of
its best three frames (quality-weighted mean of unit vectors, renormalised) and sends one
signed request per attempt, marked with the number of views fused: the service decides a
fused probe at its own calibrated threshold. An attempt is decided early, as soon as its
frames weigh enough (about three good frames), else when the face is lost, after
``max_frames`` or at the time-out.
Frames too poor to judge are dropped with a reason; an attempt with no usable frame is
reported as "face too poor" and sends nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_agent.face.align import DLIB_150, align
from edge_agent.face.detect import Face

# Frames fused into one probe at most: the service's fused threshold is calibrated for
# three views (training/calibrate.py); fusing more would raise impostors' scores further.
FUSED_VIEWS = 3


@dataclass(frozen=True)
class QualityConfig:
    """Limits below which a frame is dropped, and levels from which it counts in full."""

    min_face_px: float = 40.0  # shorter side of the detected box
    good_face_px: float = 80.0
    min_sharpness: float = 6.0  # variance of the Laplacian on the 150 px chip (sharp: 25-150)
    good_sharpness: float = 40.0
    max_yaw_deg: float = 60.0  # rough yaw from the five landmarks (it overshoots)
    good_yaw_deg: float = 25.0
    min_score: float = 0.7  # the detector's confidence
    good_score: float = 0.9


@dataclass(frozen=True)
class FrameQuality:
    weight: float  # 0 when dropped, else 0.25^4 .. 1
    reason: str | None  # why the frame is too poor to judge; None when usable
    face_px: float
    sharpness: float
    yaw_deg: float
    score: float


def estimate_yaw(landmarks: np.ndarray) -> float:
    """Return a rough yaw in degrees from the nose's offset to the eyes' midpoint.

    A nose tip about half the eye span in front of the eyes moves by that depth times
    sin(yaw) while the span shrinks with cos(yaw), so the ratio is about tan(yaw).
    """
    eye_a, eye_b, nose = landmarks[0], landmarks[1], landmarks[2]
    half_span = max(abs(float(eye_b[0] - eye_a[0])) / 2, 1e-6)
    ratio = (float(nose[0]) - float(eye_a[0] + eye_b[0]) / 2) / half_span
    return float(np.degrees(np.arctan(ratio)))


def _ramp(value: float, low: float, high: float) -> float:
    """Map ``low`` -> 0.25 and ``high`` (or better) -> 1: a usable frame never counts as 0."""
    return 0.25 + 0.75 * float(np.clip((value - low) / (high - low), 0.0, 1.0))


def frame_quality(image: np.ndarray, face: Face, cfg: QualityConfig | None = None) -> FrameQuality:
    """Judge one detected face: size, sharpness, yaw and detector score."""
    c = cfg or QualityConfig()
    face_px = float(min(face.box[2], face.box[3]))
    chip = align(image, face.landmarks, DLIB_150).chip
    sharpness = float(cv2.Laplacian(cv2.cvtColor(chip, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())
    yaw = estimate_yaw(face.landmarks)
    score = float(face.score)
    reason = None
    if face_px < c.min_face_px:
        reason = f"face too small ({face_px:.0f} px < {c.min_face_px:.0f})"
    elif sharpness < c.min_sharpness:
        reason = f"too blurred (sharpness {sharpness:.1f} < {c.min_sharpness:.0f})"
    elif abs(yaw) > c.max_yaw_deg:
        reason = f"turned away (yaw {yaw:.0f}° beyond ±{c.max_yaw_deg:.0f}°)"
    elif score < c.min_score:
        reason = f"detector unsure (score {score:.2f} < {c.min_score:.2f})"
    weight = 0.0
    if reason is None:
        weight = (
            _ramp(face_px, c.min_face_px, c.good_face_px)
            * _ramp(sharpness, c.min_sharpness, c.good_sharpness)
            * _ramp(-abs(yaw), -c.max_yaw_deg, -c.good_yaw_deg)
            * _ramp(score, c.min_score, c.good_score)
        )
    return FrameQuality(weight, reason, face_px, sharpness, yaw, score)


def fuse(templates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the weighted mean of unit templates (N, D), renormalised to unit length."""
    t = np.asarray(templates, np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    mean = (np.asarray(weights, np.float64)[:, None] * t).sum(0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


@dataclass(frozen=True)
class AttemptConfig:
    enough_weight: float = 3.0  # decide early once the frames weigh this much (3 good frames)
    max_frames: int = 10  # usable frames at most per attempt
    timeout_s: float = 2.0  # decide with what there is this long after the first frame
    min_iou: float = 0.3  # the same tracked face when consecutive boxes overlap this much


@dataclass
class Attempt:
    """The frames of one tracked face, and why the attempt was closed."""

    started: float
    box: tuple[float, float, float, float] | None = None
    labels: list[str] = field(default_factory=list)
    templates: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (frame label, reason)
    closed_by: str = ""
    liveness: Any = None  # the attempt's liveness state (edge_agent.liveness.gate), if checked

    @property
    def weight(self) -> float:
        return float(sum(self.weights))

    @property
    def usable(self) -> bool:
        return bool(self.templates)

    def fused(self) -> tuple[np.ndarray, int]:
        """The attempt's one probe, fused from its best frames, and how many were fused."""
        if not self.templates:
            raise ValueError("the attempt has no usable frame")
        best = np.argsort(self.weights)[::-1][:FUSED_VIEWS]
        weights = np.asarray(self.weights)[best]
        return fuse(np.stack([self.templates[i] for i in best]), weights), len(best)

    def poor_reason(self) -> str:
        """Why nothing was sent: the most common reason its frames were dropped."""
        if not self.dropped:
            return "face too poor"
        reason, n = Counter(r.split(" (")[0] for _, r in self.dropped).most_common(1)[0]
        return f"face too poor: {reason} in {n} of {len(self.dropped)} frames"


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


class AttemptTracker:
    """Group the frames of one tracked face into attempts; return each attempt as it closes."""

    def __init__(
        self,
        cfg: AttemptConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        liveness: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg = cfg or AttemptConfig()
        self.clock = clock
        self.current: Attempt | None = None
        self.liveness = liveness  # makes each new attempt's liveness state

    def _close(self, why: str) -> list[Attempt]:
        done, self.current = self.current, None
        if done is None:
            return []
        done.closed_by = why
        return [done]

    def add(
        self,
        label: str,
        face: Face,
        quality: FrameQuality,
        template: np.ndarray | None,
        frame: np.ndarray | None = None,
    ) -> list[Attempt]:
        """Add one frame's main face; return the attempts this frame closed (0 to 2).

        With liveness checked, every frame with a face (``frame`` given) feeds it, and the
        attempt is not closed early before its challenge is decided.
        """
        closed: list[Attempt] = []
        now = self.clock()
        cur = self.current
        if cur is not None and cur.box is not None and _iou(cur.box, face.box) < self.cfg.min_iou:
            closed += self._close("face lost")
        if self.current is None:
            self.current = Attempt(started=now, liveness=self.liveness and self.liveness())
        cur = self.current
        cur.box = face.box
        if cur.liveness is not None and frame is not None:
            cur.liveness.add(now, frame, face)
        ready = cur.liveness is None or cur.liveness.ready
        if quality.reason is not None or template is None:
            cur.dropped.append((label, quality.reason or "no template"))
        else:
            cur.labels.append(label)
            cur.templates.append(np.asarray(template, np.float32))
            cur.weights.append(quality.weight)
        if cur.weight >= self.cfg.enough_weight and ready:
            closed += self._close("enough frames")
        elif len(cur.templates) >= self.cfg.max_frames and ready:
            closed += self._close("max frames")
        elif now - cur.started >= self.cfg.timeout_s:
            closed += self._close("time-out")
        return closed

    def no_face(self) -> list[Attempt]:
        """A frame without a face: a missed detection is tolerated until the time-out."""
        cur = self.current
        if cur is not None and self.clock() - cur.started >= self.cfg.timeout_s:
            return self._close("time-out")
        return []

    def flush(self) -> list[Attempt]:
        """The source ended: close the open attempt."""
        return self._close("end of source")
