"""The anonymizer interface: replace a face in a frame, optionally under a subject key."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edge_agent.face.align import DLIB_150, ChipSpec, align, paste_back, soft_mask
from edge_agent.face.detect import Face
from edge_agent.keys import check_key


class Anonymizer(ABC):
    """Align a face to ``spec``, transform the chip, and paste it back with a soft mask.

    Keyed anonymizers (``keyed = True``) need a 32-byte key. Those that support key-
    controlled recovery (KVFA) override :meth:`recover`.
    """

    name = "anonymizer"
    keyed = False
    spec: ChipSpec = DLIB_150

    def __init__(self) -> None:
        self.mask = soft_mask(self.spec.size)

    @abstractmethod
    def transform_chip(self, chip: np.ndarray, key: bytes | None) -> np.ndarray:
        """Return the anonymized version of an aligned BGR chip."""

    def anonymize(self, image: np.ndarray, face: Face, key: bytes | None = None) -> np.ndarray:
        """Return a copy of ``image`` with ``face`` replaced."""
        if self.keyed:
            if key is None:
                raise ValueError(f"anonymizer {self.name!r} needs a subject key")
            key = check_key(key)
        aligned = align(image, face.landmarks, self.spec)
        chip = self.transform_chip(aligned.chip, key)
        return paste_back(image, chip, aligned.matrix, self.mask)

    @property
    def recovers(self) -> bool:
        """Return whether :meth:`recover` is implemented (KVFA)."""
        return type(self).recover is not Anonymizer.recover

    def recover(self, image: np.ndarray, face: Face, key: bytes) -> np.ndarray:
        """Return the original identity's embedding, in the system recognizer's space."""
        raise NotImplementedError(f"anonymizer {self.name!r} has no key-controlled recovery")
