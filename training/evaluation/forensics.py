"""MesoNet forgery detectors, for evaluation only (never in a loss; see their README).

Four small CNNs (Afchar et al., WIFS 2018) trained on face-swapped (DF) and reenacted (F2F)
video frames. They react to missing fine texture more than to whether a face is natural,
so their scores are read beside the recognizer and detection metrics, never alone.

They are sensitive to the crop: on 200 random LFW photos this crop (YuNet's landmarks)
gave mean fake scores 0.376 / 0.167 / 0.333 / 0.025 (Meso4_DF, Meso4_F2F,
MesoInception_DF, MesoInception_F2F) where their README reports 0.533 / 0.197 / 0.570 /
0.063. Compare originals and virtual faces of one run, not numbers across crops.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np

from edge_agent.onnx_runtime import create_session
from training.datasets import models_root

log = logging.getLogger(__name__)

FORENSICS_ENV = "KFAAR_FORENSICS_DIR"
DETECTORS = ("Meso4_DF", "Meso4_F2F", "MesoInception_DF", "MesoInception_F2F")
CROP = 256


def forensics_dir(explicit: str | Path | None = None) -> Path:
    """Return the MesoNet folder: ``explicit``, ``$KFAAR_FORENSICS_DIR``, or the models folder."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(FORENSICS_ENV)
    return Path(env).expanduser() if env else models_root() / "forensics"


def meso_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Return the 256x256 RGB crop MesoNet expects, as its README defines it.

    Centred on the nose, side 2.2 * 1.3 * max(eye distance, eye-to-mouth distance),
    rotated so that the eyes are level.
    """
    lm = np.asarray(landmarks, np.float64)
    eye_l, eye_r, nose = lm[0], lm[1], lm[2]
    eyes, mouth = (eye_l + eye_r) / 2, (lm[3] + lm[4]) / 2
    span = max(np.linalg.norm(eye_r - eye_l), np.linalg.norm(mouth - eyes))
    side = 2.2 * 1.3 * span
    if not side > 1:
        raise ValueError("landmarks are degenerate")
    angle = math.degrees(math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0]))
    matrix = cv2.getRotationMatrix2D((float(nose[0]), float(nose[1])), angle, CROP / side)
    matrix[:, 2] += CROP / 2 - nose
    crop = cv2.warpAffine(image, matrix, (CROP, CROP), flags=cv2.INTER_LINEAR)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


class MesoNets:
    """The four MesoNet detectors; :meth:`fake_scores` gives 1 - p_real per detector."""

    def __init__(self, folder: str | Path | None = None, threads: int = 1) -> None:
        folder = forensics_dir(folder)
        missing = [n for n in DETECTORS if not (folder / f"MesoNet_{n}.onnx").is_file()]
        if missing:
            raise FileNotFoundError(
                f"MesoNet detectors {', '.join(missing)} not found in {folder} "
                f"(pass --forensics DIR or set ${FORENSICS_ENV})"
            )
        self.sessions = {
            n: create_session(folder / f"MesoNet_{n}.onnx", threads) for n in DETECTORS
        }

    def fake_scores(self, crops: list[np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
        """Return each detector's fake score (1 - p_real) for RGB 256x256 crops."""
        out: dict[str, list] = {n: [] for n in DETECTORS}
        for i in range(0, len(crops), batch):
            x = np.stack(crops[i : i + batch]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
            for name, session in self.sessions.items():
                p_real = session.run(None, {session.get_inputs()[0].name: x})[0].ravel()
                out[name].append(1.0 - p_real)
        return {n: np.concatenate(v) if v else np.zeros(0) for n, v in out.items()}


def summarize(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Return mean fake score and share above 0.5 per detector."""
    return {
        n: {"mean_fake": float(s.mean()), "share_fake": float((s > 0.5).mean())}
        for n, s in scores.items()
    }
