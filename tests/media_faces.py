"""Real-face media for the anonymize tests: LFW people held out of training, short clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Two photos each of dev-split people (no part in training), from lfw_dev_triplets.txt.
PEOPLE = {
    "Al_Davis": ("Al_Davis_0001.jpg", "Al_Davis_0002.jpg"),
    "Benazir_Bhutto": ("Benazir_Bhutto_0001.jpg", "Benazir_Bhutto_0004.jpg"),
    "Christine_Gregoire": ("Christine_Gregoire_0001.jpg", "Christine_Gregoire_0004.jpg"),
    "Gabriel_Batistuta": ("Gabriel_Batistuta_0001.jpg", "Gabriel_Batistuta_0002.jpg"),
    "James_Franco": ("James_Franco_0001.jpg", "James_Franco_0002.jpg"),
    "John_Howard": ("John_Howard_0005.jpg", "John_Howard_0015.jpg"),
    "Liam_Neeson": ("Liam_Neeson_0001.jpg", "Liam_Neeson_0003.jpg"),
    "Nabil_Shaath": ("Nabil_Shaath_0001.jpg", "Nabil_Shaath_0003.jpg"),
    "Pupi_Avati": ("Pupi_Avati_0002.jpg", "Pupi_Avati_0003.jpg"),
    "Sean_Astin": ("Sean_Astin_0001.jpg", "Sean_Astin_0003.jpg"),
}


def photo(lfw: Path, name: str, which: int) -> Path:
    return lfw / name / PEOPLE[name][which]


def make_clip(face: Path, out: Path, frames: int = 16, fps: float = 12.0) -> list[np.ndarray]:
    """Write an MJPG .avi of one photo drifting and rotating a little; return its frames."""
    image = cv2.imread(str(face))
    h, w = image.shape[:2]
    size = (w + 70, h + 6)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    written = []
    for i in range(frames):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 4 * np.sin(i / 3), 1.0)
        m[:, 2] += (35 + 6 * np.sin(i / 4), 3 + 3 * np.cos(i / 5))
        frame = cv2.warpAffine(image, m, size, borderMode=cv2.BORDER_REPLICATE)
        writer.write(frame)
        written.append(frame)
    writer.release()
    return written


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps
