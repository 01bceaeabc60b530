"""The judge interface: where a judge looks (``FaceRef``) and what every judge does (``Judge``).

Kept apart from the dlib and ONNX judges so that judges of other families
(``opencv_judges``) can subclass it without importing ``judges``, which builds them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.face.detect import Face


@dataclass(frozen=True)
class FaceRef:
    """Where a judge should look: YuNet's face and, when dlib found it too, dlib's box."""

    face: Face
    dlib_box: tuple[int, int, int, int]  # left, top, right, bottom
    dlib_detected: bool

    def tag(self) -> str:
        """Return a short string that changes whenever the location would change."""
        points = ",".join(f"{v:.1f}" for v in self.face.landmarks.ravel())
        return f"{self.dlib_box}|{points}"


class Judge:
    """Base class: embed faces and score pairs of embeddings."""

    name = "judge"
    cache_id = "judge"
    # The recognizer's own "same person" rule, in its native units, where it has one.
    same_person_threshold: float | None = None

    def embed(self, items: list[tuple[np.ndarray, FaceRef]], desc: str = "judge") -> np.ndarray:
        raise NotImplementedError

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_native(self, score: float) -> float:
        """Express a score threshold in the judge's own units."""
        return score

    def from_native(self, value: float) -> float:
        """Express a threshold in the judge's own units as a score threshold."""
        return value
