"""Passive presentation-attack detection (PAD) on the edge: MiniFASNet in onnxruntime.

Each frame's main face is cropped twice around its detection box (scales 2.7 and 4.0 of
the box, as the two published MiniFASNet models were trained), resized to 80x80 BGR in
0..255, and scored by one ONNX graph holding both networks. A frame's live score is the
mean of the two models' probability of the live class. An attempt's frames are fused by
the median of their live scores (an attack needs most frames to look live, not one), and
the attempt passes when the fused score reaches the threshold of the shipped manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.assets import asset_path
from edge_agent.face.detect import Face
from edge_agent.onnx_runtime import create_session

log = logging.getLogger(__name__)

MODEL_DIR = "models/liveness"
MANIFEST = "manifest.json"
METHOD = "passive-minifasnet"
SIDE = 80  # both networks take 80x80 crops


def crop_box(frame_hw: tuple[int, int], box: tuple[float, ...], scale: float) -> tuple[int, ...]:
    """Return (x0, y0, x1, y1) inclusive: ``box`` widened ``scale`` times, kept in frame.

    The scale shrinks when the frame is too small for it, and a crop that would leave the
    frame is shifted back inside rather than padded, as the models saw in training.
    """
    h, w = frame_hw
    bx, by, bw, bh = (float(v) for v in box[:4])
    bw, bh = max(bw, 1.0), max(bh, 1.0)
    scale = min(scale, (h - 1) / bh, (w - 1) / bw)
    cw, ch = bw * scale, bh * scale
    cx, cy = bx + bw / 2, by + bh / 2
    x0, y0 = cx - cw / 2, cy - ch / 2
    x0 = min(max(x0, 0.0), (w - 1) - cw)
    y0 = min(max(y0, 0.0), (h - 1) - ch)
    return int(x0), int(y0), int(x0 + cw), int(y0 + ch)


def crops(frame: np.ndarray, face: Face, scales: tuple[float, ...]) -> list[np.ndarray]:
    """Return one (3, 80, 80) float32 BGR crop per scale, values 0..255."""
    out = []
    for s in scales:
        x0, y0, x1, y1 = crop_box(frame.shape[:2], face.box, s)
        patch = cv2.resize(frame[y0 : y1 + 1, x0 : x1 + 1], (SIDE, SIDE))
        out.append(patch.transpose(2, 0, 1).astype(np.float32))
    return out


@dataclass(frozen=True)
class LivenessResult:
    """An attempt's liveness verdict, as it is reported to the service."""

    method: str
    score: float  # fused live score, 0..1
    threshold: float
    model_version: str
    frames: int  # frames scored

    @property
    def passed(self) -> bool:
        return self.frames > 0 and self.score >= self.threshold

    def reason(self) -> str:
        """Say why an attempt failed liveness (or that it passed)."""
        if self.frames == 0:
            return "no frame scored for liveness"
        verb = "live" if self.passed else "presentation attack suspected"
        return f"{verb}: score {self.score:.2f} vs threshold {self.threshold:.2f}"


def fuse_scores(scores: list[float]) -> float:
    """Fuse per-frame live scores into the attempt's score: their median (0 if none).

    The median, not the mean: one frame that happens to look live (a glint, a blur) does
    not carry an attack, and one poor frame does not sink a live person.
    """
    return float(np.median(scores)) if scores else 0.0


class PassiveLiveness:
    """Score frames with the shipped MiniFASNet pair (fp32 or int8)."""

    def __init__(
        self,
        precision: str = "fp32",
        threads: int = 1,
        model_dir: Path | None = None,
        threshold: float | None = None,
    ) -> None:
        root = Path(model_dir) if model_dir else asset_path(MODEL_DIR)
        self.manifest = json.loads((root / MANIFEST).read_text())
        files = self.manifest["files"]
        if precision not in files:
            raise ValueError(f"precision must be one of {sorted(files)}, got {precision!r}")
        self.precision = precision
        self.session = create_session(root / files[precision]["name"], threads)
        self.scales = tuple(float(s) for s in self.manifest["scales"])
        self.live_class = int(self.manifest["live_class"])
        self.threshold = float(threshold if threshold is not None else self.manifest["threshold"])
        self.version = f"{self.manifest['name']}/{self.manifest['version']}:{precision}"

    def score_crops(self, batch: np.ndarray) -> np.ndarray:
        """Return live scores (N,) for crops (N, n_scales, 3, 80, 80)."""
        feeds = {f"crop{i}": np.ascontiguousarray(batch[:, i]) for i in range(len(self.scales))}
        probs = self.session.run(["probs"], feeds)[0]  # (N, n_scales, 3)
        return probs[:, :, self.live_class].mean(1)

    def score(self, frame: np.ndarray, face: Face) -> float:
        """Return one frame's live score (0..1) for ``face``."""
        return float(self.score_crops(np.stack(crops(frame, face, self.scales))[None])[0])

    def result(self, scores: list[float]) -> LivenessResult:
        """Fuse an attempt's frame scores into its verdict."""
        return LivenessResult(METHOD, fuse_scores(scores), self.threshold, self.version,
                              len(scores))  # fmt: skip
