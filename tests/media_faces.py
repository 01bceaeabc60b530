"""Real-face media for the anonymize tests: the shipped LFW sample faces, short clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# The sample people with two photos (edge_agent/assets/sample_faces, LFW dev identities:
# no part in training); ``photo`` takes that folder (the ``sample_faces`` fixture).
PEOPLE = {
    "Alan_Greenspan": ("Alan_Greenspan_0001.jpg", "Alan_Greenspan_0005.jpg"),
    "Benazir_Bhutto": ("Benazir_Bhutto_0002.jpg", "Benazir_Bhutto_0004.jpg"),
    "Eliane_Karp": ("Eliane_Karp_0003.jpg", "Eliane_Karp_0004.jpg"),
    "Gary_Carter": ("Gary_Carter_0001.jpg", "Gary_Carter_0002.jpg"),
    "Hugh_Grant": ("Hugh_Grant_0005.jpg", "Hugh_Grant_0008.jpg"),
    "Kathryn_Bigelow": ("Kathryn_Bigelow_0001.jpg", "Kathryn_Bigelow_0002.jpg"),
    "Lynne_Cheney": ("Lynne_Cheney_0001.jpg", "Lynne_Cheney_0002.jpg"),
    "Russell_Simmons": ("Russell_Simmons_0001.jpg", "Russell_Simmons_0002.jpg"),
}

# Two photos each of more LFW dev people, for the tests that need the data root's LFW.
LFW_PEOPLE = {
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


def photo(root: Path, name: str, which: int) -> Path:
    """Return photo ``which`` (0 or 1) of ``name`` under ``root`` (sample faces or LFW)."""
    people = PEOPLE if root.name == "sample_faces" else LFW_PEOPLE
    return root / name / people[name][which]


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
