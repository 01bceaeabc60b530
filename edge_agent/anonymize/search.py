"""Search anonymized footage for one person with the key.

Two ways to score a face ``v`` found in the outputs against a reference photo ``x_ref``:

- ``kvfa`` (the paper's): ``I(R(v), k)`` recovers an embedding in the system recognizer's
  space, compared with ``R(x_ref)``;
- ``virtual``: the reference is anonymized under the same key, and ``R(G(x_ref, k))`` is
  compared with ``R(v)``; this relies on synchronism, which the shipped model meets
  better than it meets KVFA (docs/ANONYMIZE.md has both measured).

Nothing de-anonymized is ever written: only file names, frame numbers, boxes and scores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymize import VIDEO_SUFFIXES
from edge_agent.capture import IMAGE_SUFFIXES
from edge_agent.face.align import align
from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import ImageError, load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.progress import progress

log = logging.getLogger(__name__)


METHODS = ("kvfa", "virtual")


@dataclass(frozen=True)
class Hit:
    file: str
    frame: int | None  # None for a still image
    box: tuple[float, float, float, float]
    score: float  # cosine of I(R(v), k) with R(x_ref), or of R(v) with R(G(x_ref, k))

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "frame": self.frame,
            "box": [round(float(v), 1) for v in self.box],
            "score": round(self.score, 4),
        }


def media_files(paths: list[Path]) -> list[Path]:
    """Expand folders (recursively) into their image and video files, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                q
                for q in p.rglob("*")
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
            )
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def _frames(path: Path, stride: int) -> Iterator[tuple[int | None, np.ndarray]]:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        yield None, load_image(path)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ImageError(f"{path}: cannot open as a video")
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            if i % stride == 0:
                yield i, frame
            i += 1
    finally:
        cap.release()


class FootageSearch:
    """Score every face in anonymized footage against a reference person under one key."""

    def __init__(
        self,
        anon: HpvfgAnonymizer,
        detector: FaceDetector,
        key: bytes,
        reference: Path,
        workers: int = 1,
        method: str = "virtual",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.anon, self.detector, self.key, self.method = anon, detector, key, method
        self.workers = max(1, workers)
        image = load_image(reference)
        face = detector.primary(image)
        if method == "virtual":  # the reference goes the same way as the footage did
            image = anon.anonymize(image, face, key)
        self.reference = anon.recognizer.embed(image, face.landmarks).astype(np.float32)

    @property
    def default_threshold(self) -> float:
        """Return the bundle's calibrated threshold (FAR 1e-3) for this method."""
        if self.method == "virtual":
            return float(self.anon.bundle.manifest["virtual_threshold"])
        return self.anon.threshold

    def score_frames(self, frames: list[np.ndarray]) -> list[list[tuple]]:
        """Return, per frame, (box, score) for each detected face."""
        with ThreadPoolExecutor(self.workers) as pool:
            detections = list(pool.map(self.detector.detect, frames))
        chips, owners = [], []
        for i, (frame, faces) in enumerate(zip(frames, detections, strict=True)):
            for f in faces:
                chips.append(align(frame, f.landmarks, self.anon.spec).chip)
                owners.append((i, f.box))
        out: list[list[tuple]] = [[] for _ in frames]
        if not chips:
            return out
        found = self.anon.recognizer.embed_chips(np.stack(chips))
        if self.method == "kvfa":
            found = self.anon.recover_embeddings(found, self.key)
        found /= np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)
        scores = found @ self.reference
        for (i, box), s in zip(owners, scores, strict=True):
            out[i].append((box, float(s)))
        return out

    def search(self, files: list[Path], stride: int = 1) -> tuple[list[Hit], list[tuple]]:
        """Return every face's hit (all scores) and the (file, error) of unreadable files."""
        hits, errors = [], []
        for path in progress(files, desc="search", unit="file"):
            try:
                batch: list[tuple[int | None, np.ndarray]] = []
                for item in _frames(path, stride):
                    batch.append(item)
                    if len(batch) >= 16:
                        hits += self._score(path, batch)
                        batch = []
                hits += self._score(path, batch)
            except (OSError, ValueError) as exc:
                log.info("%s: %s", path, exc)  # returned to the caller, which reports it
                errors.append((str(path), str(exc)))
        return hits, errors

    def _score(self, path: Path, batch: list) -> list[Hit]:
        if not batch:
            return []
        scored = self.score_frames([f for _, f in batch])
        return [
            Hit(str(path), idx, tuple(box), s)
            for (idx, _), faces in zip(batch, scored, strict=True)
            for box, s in faces
        ]
