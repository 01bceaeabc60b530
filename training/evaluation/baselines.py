"""Baseline anonymizers for the harness: identity, blur, pixelate and keyed block scrambling."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymizer import Anonymizer
from edge_agent.face.align import align
from edge_agent.face.detect import Face
from edge_agent.hpvfg import PRECISIONS, Bundle, HpvfgAnonymizer
from edge_agent.keys import check_key, seeded_rng
from edge_agent.recognizer import SystemRecognizer


class IdentityAnonymizer(Anonymizer):
    """Change nothing, through the same align-and-paste path: the harness's floor."""

    name = "identity"

    def transform_chip(self, chip: np.ndarray, key: bytes | None) -> np.ndarray:
        return chip


class BlurAnonymizer(Anonymizer):
    """Gaussian blur of the face region, as common redaction tools do."""

    name = "blur"

    def __init__(self, sigma: float = 6.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError("blur sigma must be positive")
        self.sigma = sigma
        self.name = f"blur:{sigma:g}"

    def transform_chip(self, chip: np.ndarray, key: bytes | None) -> np.ndarray:
        return cv2.GaussianBlur(chip, (0, 0), self.sigma)


class PixelateAnonymizer(Anonymizer):
    """Mosaic of ``blocks`` x ``blocks`` cells over the face chip."""

    name = "pixelate"

    def __init__(self, blocks: int = 10) -> None:
        super().__init__()
        if not 1 <= blocks <= self.spec.size:
            raise ValueError(f"pixelate blocks must be in 1..{self.spec.size}")
        self.blocks = blocks
        self.name = f"pixelate:{blocks}"

    def transform_chip(self, chip: np.ndarray, key: bytes | None) -> np.ndarray:
        small = cv2.resize(chip, (self.blocks, self.blocks), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, chip.shape[1::-1], interpolation=cv2.INTER_NEAREST)


class ScrambleAnonymizer(Anonymizer):
    """Permute the chip's blocks by a key-seeded permutation; the key holder can undo it.

    A classical keyed, invertible baseline: it exercises the harness's key and KVFA
    metrics, and shows what "recoverable but not a face" scores.
    """

    name = "scramble"
    keyed = True
    grid = 10  # 150 px chip -> 15 px blocks

    def __init__(self, recognizer: SystemRecognizer | None = None) -> None:
        super().__init__()
        # Paste the whole square: an elliptical mask would cut moved blocks off at the rim.
        self.mask = np.ones_like(self.mask)
        self._recognizer = recognizer

    def _permutation(self, key: bytes) -> np.ndarray:
        return seeded_rng(check_key(key), "kfaar-scramble").permutation(self.grid**2)

    def _blocks(self, chip: np.ndarray) -> np.ndarray:
        b = self.spec.size // self.grid
        g = self.grid
        return chip.reshape(g, b, g, b, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, b, b, 3)

    def _unblocks(self, blocks: np.ndarray) -> np.ndarray:
        g, b = self.grid, blocks.shape[1]
        return blocks.reshape(g, g, b, b, 3).transpose(0, 2, 1, 3, 4).reshape(g * b, g * b, 3)

    def transform_chip(self, chip: np.ndarray, key: bytes | None) -> np.ndarray:
        return self._unblocks(self._blocks(chip)[self._permutation(key)])

    def unscramble(self, chip: np.ndarray, key: bytes) -> np.ndarray:
        """Invert :meth:`transform_chip` under ``key``."""
        inverse = np.argsort(self._permutation(key))
        return self._unblocks(self._blocks(chip)[inverse])

    def recover(self, image: np.ndarray, face: Face, key: bytes) -> np.ndarray:
        if self._recognizer is None:
            self._recognizer = SystemRecognizer()
        chip = align(image, face.landmarks, self.spec).chip
        return self._recognizer.embed_chips(self.unscramble(chip, key)[None])[0]


BASELINES = {
    "identity": IdentityAnonymizer,
    "blur": BlurAnonymizer,
    "pixelate": PixelateAnonymizer,
    "scramble": ScrambleAnonymizer,
}


def make_anonymizer(spec: str) -> Anonymizer:
    """Build an anonymizer from a spec.

    ``identity``, ``blur[:SIGMA]``, ``pixelate[:N]`` and ``scramble`` are the baselines;
    ``hpvfg[:int8]`` is the packaged trained model and ``DIR[:int8]`` a bundle folder
    written by ``kfaar export``.
    """
    name, _, arg = spec.partition(":")
    if name in ("identity", "scramble") and not arg:
        return BASELINES[name]()
    if name == "blur":
        return BlurAnonymizer(float(arg)) if arg else BlurAnonymizer()
    if name == "pixelate":
        return PixelateAnonymizer(int(arg)) if arg else PixelateAnonymizer()
    if arg in ("", *PRECISIONS) and (name == "hpvfg" or Path(name).is_dir()):
        bundle = Bundle.load(None if name == "hpvfg" else Path(name))
        return HpvfgAnonymizer(bundle, arg or "fp32")
    raise ValueError(
        f"unknown anonymizer {spec!r}: use identity, blur[:SIGMA], pixelate[:N], scramble, "
        "hpvfg[:int8] or a model bundle folder [:int8]"
    )
