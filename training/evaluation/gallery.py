"""No real person inside: is a virtual face recognised as one of the training identities?

A model that bakes real faces into its weights (banks, composites, nearest neighbours) can
hand out a real training person as somebody's virtual face. This check builds a gallery
of identity means over the identities of an LFW-style folder that the evaluation does not
use (the training side), finds each virtual face's nearest identity with a judge, and
counts how often that identity passes the judge's own "same person" rule. The same count
on the originals (people not in the gallery) is the gallery's false-match floor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import ImageError, load_image
from edge_agent.progress import progress
from training.evaluation.cache import embed_cached
from training.evaluation.judges import FaceRef, Judge, locate

log = logging.getLogger(__name__)


def gallery_identities(
    root: Path, exclude: set[str], size: int, per_identity: int = 2
) -> dict[str, list[Path]]:
    """Pick ``size`` identities of ``root`` not in ``exclude``, spread over the alphabet."""
    names = sorted(d.name for d in Path(root).iterdir() if d.is_dir() and d.name not in exclude)
    if not names:
        raise ValueError(f"{root}: no identity left for the gallery")
    if size < len(names):
        names = [names[i] for i in np.linspace(0, len(names) - 1, size).astype(int)]
    return {n: sorted((Path(root) / n).glob("*.jpg"))[:per_identity] for n in names}


class TrainingGallery:
    """Identity means of training-side people, embedded by each judge (cached per image)."""

    def __init__(self, identities: dict[str, list[Path]], cache: Path | None = None) -> None:
        self.cache = cache
        detector = FaceDetector()
        self.files: list[Path] = []
        self.items: list[tuple[np.ndarray, FaceRef]] = []
        owners: list[str] = []
        for name, files in progress(list(identities.items()), desc="gallery faces"):
            for f in files:
                try:
                    image = load_image(f)
                    ref = locate(image, detector.primary(image))
                except (ImageError, NoFaceError) as exc:
                    log.debug("gallery: skipping %s: %s", f, exc)
                    continue
                self.files.append(f)
                self.items.append((image, ref))
                owners.append(name)
        self.names = sorted(set(owners))
        index = {n: i for i, n in enumerate(self.names)}
        self.owner = np.array([index[n] for n in owners], int)
        self._means: dict[str, np.ndarray] = {}

    def means(self, judge: Judge) -> np.ndarray:
        """Return one mean embedding per identity (rows follow ``self.names``)."""
        if judge.name not in self._means:
            emb = embed_cached(judge, self.files, self.items, self.cache).astype(np.float64)
            if judge.metric.startswith("cosine"):
                emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            sums = np.zeros((len(self.names), emb.shape[1]))
            np.add.at(sums, self.owner, emb)
            self._means[judge.name] = sums / np.bincount(self.owner)[:, None]
        return self._means[judge.name]

    def match_share(self, judge: Judge, probes: np.ndarray) -> tuple[float, np.ndarray]:
        """Return the share of probes whose nearest identity passes the judge's rule, and scores."""
        if judge.same_person_threshold is None:
            raise ValueError(f"judge {judge.name} has no fixed same-person threshold")
        means = self.means(judge)
        best = np.array([judge.score(means, p[None, :]).max() for p in np.asarray(probes)])
        thr = judge.from_native(judge.same_person_threshold)
        return float((best >= thr).mean()), best
