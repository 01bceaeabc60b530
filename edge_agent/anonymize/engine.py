"""Replace faces in frames by their virtual faces: keys chosen per face, chips batched per key."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.align import align, paste_back
from edge_agent.face.detect import Face, FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import check_key, fingerprint, new_key
from edge_agent.recognizer import SAME_PERSON_THRESHOLD

log = logging.getLogger(__name__)

FALLBACKS = ("fail", "blur", "skip")


def read_key_file(path: Path) -> bytes:
    """Read a raw key file: 32 bytes, or 64 hex digits (a trailing newline is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no key file at {path}")
    data = path.read_bytes()
    if len(data) == 32:
        return check_key(data)
    text = data.strip()
    try:
        if len(text) == 64:
            return check_key(bytes.fromhex(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        pass
    raise ValueError(f"{path} is not a key file (32 raw bytes or 64 hex digits)")


@dataclass
class Subject:
    """An enrolled person: a reference embedding and the key their faces are replaced under."""

    name: str
    embedding: np.ndarray  # (128,) system embedding of the reference photo
    key: bytes


class KeyChooser:
    """Pick each face's key: its enrolled subject's key, else the default (site) key.

    Without a default key, faces of no enrolled subject get a key drawn for this run and
    thrown away: they are anonymized, but nobody can ever recover or search them.
    """

    def __init__(
        self,
        default: bytes | None,
        subjects: list[Subject] | None = None,
        threshold: float = SAME_PERSON_THRESHOLD,
    ) -> None:
        self.subjects = subjects or []
        if default is None and not self.subjects:
            raise ValueError("give a key: --key-file, --site-key or --key-map")
        self.default = check_key(default) if default is not None else new_key()
        self.default_label = "site" if default is not None else "ephemeral"
        self.threshold = threshold
        self._refs = np.stack([s.embedding for s in self.subjects]) if self.subjects else None

    def choose(self, z: np.ndarray) -> list[tuple[bytes, str]]:
        """Return (key, kind) for each system embedding in ``z`` (N, 128).

        The kind is "site", "subject" or "ephemeral", never a subject's name: a name next
        to a face box in a sidecar would undo the anonymization.
        """
        if self._refs is None or len(z) == 0:
            return [(self.default, self.default_label)] * len(z)
        sims = np.asarray(z) @ self._refs.T
        out = []
        for row in sims:
            best = int(np.argmax(row))
            if row[best] >= self.threshold:
                out.append((self.subjects[best].key, "subject"))
            else:
                out.append((self.default, self.default_label))
        return out

    def fingerprints(self) -> list[str]:
        """Return the fingerprints of every key this chooser may use, never a key."""
        return sorted({fingerprint(k) for k in [self.default, *(s.key for s in self.subjects)]})


def load_key_map(
    path: Path, anonymizer: HpvfgAnonymizer, detector: FaceDetector, keystore=None
) -> list[Subject]:
    """Read an enrollment map: {"subjects": [{"name", "reference", "key_file" | "key"}]}.

    Relative paths are relative to the map's folder; ``key`` names a keystore entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no key map at {path}")
    try:
        rows = json.loads(path.read_text())["subjects"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a key map ({exc})") from exc
    subjects = []
    for row in rows:
        name = row.get("name")
        if not name or "reference" not in row or not ({"key_file", "key"} & row.keys()):
            raise ValueError(f"{path}: each subject needs name, reference and key_file or key")
        if "key_file" in row:
            key = read_key_file(path.parent / row["key_file"])
        elif keystore is None:
            raise ValueError(f"{path}: subject {name!r} names a keystore entry; give --keystore")
        else:
            key = keystore.key(row["key"])
        image = load_image(path.parent / row["reference"])
        face = detector.primary(image)
        subjects.append(Subject(name, anonymizer.recognizer.embed(image, face.landmarks), key))
    return subjects


def generate_grouped(
    anon: HpvfgAnonymizer, chips: np.ndarray, z: np.ndarray, keys: list[bytes], batch: int
) -> np.ndarray:
    """Run the generator on chips with mixed keys, one batched call per key."""
    out = np.empty_like(chips)
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    for k, idx in groups.items():
        for s in range(0, len(idx), batch):
            part = idx[s : s + batch]
            out[part] = anon.generate(chips[part], z[part], k)
    return out


def blur_region(image: np.ndarray, box: tuple[float, float, float, float], pad: float = 0.3):
    """Pixelate then blur a padded box in place: no identity survives, even to a recognizer."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    x0, y0 = max(0, int(x - pad * bw)), max(0, int(y - pad * bh))
    x1, y1 = min(w, int(x + bw * (1 + pad)) + 1), min(h, int(y + bh * (1 + pad)) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    region = image[y0:y1, x0:x1]
    small = cv2.resize(region, (8, 8), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    k = max(3, (min(x1 - x0, y1 - y0) // 4) | 1)
    image[y0:y1, x0:x1] = cv2.GaussianBlur(coarse, (k, k), 0)


def blur_frame(image: np.ndarray) -> np.ndarray:
    """Return a copy of the whole frame pixelated beyond recognition (the blur fallback)."""
    h, w = image.shape[:2]
    out = image.copy()
    blur_region(out, (0, 0, w, h), pad=0)
    return out


REPLACE_SCORE = 0.6  # the detector's default operating point (edge_agent/face/detect.py)


@dataclass
class FaceOut:
    """One replaced (or blurred) face, as the sidecar records it."""

    box: tuple[float, float, float, float]
    score: float
    key_label: str
    key_fingerprint: str
    mode: str = "detected"  # detected | held (tracked through a miss) | blurred | suspect
    frame: int | None = None
    track: int | None = None

    def to_json(self) -> dict:
        d = {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 3),
            "mode": self.mode,
            "key_kind": self.key_label,
            "key_fingerprint": self.key_fingerprint,
        }
        if self.frame is not None:
            d["frame"], d["track"] = self.frame, self.track
        return d


@dataclass
class Engine:
    """Detect, choose keys, generate in batches and paste back; shared by images and video."""

    anon: HpvfgAnonymizer
    keys: KeyChooser
    detector: FaceDetector = field(default_factory=FaceDetector)
    batch: int = 16
    # Detections from this score on get a virtual face; the detector's own threshold may
    # sit lower, and what scores in between (cut-off, blurred or turned-away faces, some
    # hands) is blurred instead: for anonymization a miss leaks, a false alarm does not.
    replace_score: float = REPLACE_SCORE

    def split(self, faces: list[Face]) -> tuple[list[Face], list[Face]]:
        """Return (faces to replace, suspected faces to blur)."""
        return (
            [f for f in faces if f.score >= self.replace_score],
            [f for f in faces if f.score < self.replace_score],
        )

    @staticmethod
    def blur_suspects(image: np.ndarray, suspects: list[Face], frame: int | None = None):
        """Blur suspected faces in place; return their sidecar records."""
        for f in suspects:
            blur_region(image, f.box)
        return [FaceOut(f.box, f.score, "-", "-", "suspect", frame) for f in suspects]

    def chips(self, image: np.ndarray, landmarks: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """Align each face; return chips (N, 150, 150, 3) and their frame->chip matrices."""
        aligned = [align(image, lm, self.anon.spec) for lm in landmarks]
        size = self.anon.spec.size
        chips = np.stack([a.chip for a in aligned]) if aligned else np.zeros((0, size, size, 3))
        return chips.astype(np.uint8), [a.matrix for a in aligned]

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return self.anon.recognizer.embed_chips(chips)

    def paste(self, image: np.ndarray, virtual: np.ndarray, matrices: list) -> np.ndarray:
        out = image
        for chip, m in zip(virtual, matrices, strict=True):
            out = paste_back(out, chip, m, self.anon.mask)
        return out

    def replace_images(self, items: list[tuple[np.ndarray, list]]) -> list[tuple]:
        """Replace the faces of several images in one batch; return (image, [FaceOut]) each."""
        per_image = [self.chips(img, [f.landmarks for f in faces]) for img, faces in items]
        counts = [len(c) for c, _ in per_image]
        if sum(counts) == 0:
            return [(img.copy(), []) for img, _ in items]
        chips = np.concatenate([c for c, _ in per_image])
        z = self.embed(chips)
        chosen = self.keys.choose(z)
        virtual = generate_grouped(self.anon, chips, z, [k for k, _ in chosen], self.batch)
        out, start = [], 0
        for (img, faces), (_, mats), n in zip(items, per_image, counts, strict=True):
            part, keys = virtual[start : start + n], chosen[start : start + n]
            records = [
                FaceOut(f.box, f.score, label, fingerprint(k))
                for f, (k, label) in zip(faces, keys, strict=True)
            ]
            out.append((self.paste(img, part, mats), records))
            start += n
        return out
