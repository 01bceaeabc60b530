"""Aligned face chips and their system embeddings for an LFW-style folder, cached as .npz."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.capture import IMAGE_SUFFIXES
from edge_agent.face.align import DLIB_150, align
from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import ImageError, load_image
from edge_agent.progress import progress
from edge_agent.recognizer import SystemRecognizer
from training.datasets import identity_of

log = logging.getLogger(__name__)


@dataclass
class ChipSet:
    """Aligned DLIB_150 chips with labels: what every trainer and calibrator reads."""

    paths: np.ndarray  # (N,) relative paths
    labels: np.ndarray  # (N,) int identity index
    names: np.ndarray  # (C,) identity names
    chips: np.ndarray  # (N, 150, 150, 3) uint8 BGR
    z: np.ndarray  # (N, 128) float32 system embeddings, unit length

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> ChipSet:
        """Return the rows selected by a boolean mask or an index array."""
        return ChipSet(
            self.paths[keep], self.labels[keep], self.names, self.chips[keep], self.z[keep]
        )

    def save(self, path: Path) -> None:
        """Write the set as one compressed-free .npz (chips are already compact)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp, paths=self.paths, labels=self.labels, names=self.names, chips=self.chips, z=self.z
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ChipSet:
        """Read a set written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            return cls(f["paths"], f["labels"], f["names"], f["chips"], f["z"])


def list_images(root: Path, exclude_identities: set[str] = frozenset()) -> list[str]:
    """Return the sorted relative paths ``<identity>/<image>`` under ``root``."""
    rels = []
    for p in sorted(root.glob("*/*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.parent.name not in exclude_identities:
            rels.append(f"{p.parent.name}/{p.name}")
    return rels


def build_chip_set(root: Path, rels: list[str], detector: FaceDetector | None = None) -> ChipSet:
    """Detect, align and embed each image; images without a face are skipped with a warning."""
    detector = detector or FaceDetector()
    recognizer = SystemRecognizer()
    kept, chips = [], []
    for rel in progress(rels, desc="align"):
        try:
            image = load_image(root / rel)
            face = detector.primary(image)
        except (ImageError, NoFaceError) as exc:
            log.warning("skipping %s: %s", rel, exc)
            continue
        kept.append(rel)
        chips.append(align(image, face.landmarks, DLIB_150).chip)
    if not kept:
        raise NoFaceError(f"no face found in any of {len(rels)} images under {root}")
    chips_arr = np.stack(chips)
    z = np.concatenate(
        [recognizer.embed_chips(chips_arr[i : i + 256]) for i in range(0, len(chips_arr), 256)]
    )
    names, labels = np.unique([identity_of(r) for r in kept], return_inverse=True)
    return ChipSet(np.array(kept), labels.astype(np.int32), names, chips_arr, z.astype(np.float32))


def training_chip_sets(lfw: Path, dev_triplets: Path, cache: Path) -> tuple[Path, Path]:
    """Build (once) the train and dev chip sets: dev identities are held out of training."""
    from training.datasets import read_triplets

    dev, _ = read_triplets(dev_triplets)
    dev_rels = sorted({p for t in dev for p in (t.x1, t.x2, t.y)})
    dev_ids = {identity_of(r) for r in dev_rels}
    out = []
    for name, rels in (("train", list_images(lfw, dev_ids)), ("dev", dev_rels)):
        path = cache / f"{name}_chips.npz"
        if not path.is_file():
            log.info("building %s chips from %d images into %s", name, len(rels), path)
            build_chip_set(lfw, rels).save(path)
        out.append(path)
    return out[0], out[1]
