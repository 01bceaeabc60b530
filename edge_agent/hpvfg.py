"""HPVFG virtual faces and KVFA recovery on the edge, run from a shipped ONNX bundle.

A bundle is a folder with ``manifest.json`` and the ONNX files it lists by SHA-256:
``projector.onnx`` (z, key rotation -> z'), ``generator.onnx`` and ``generator.int8.onnx``
(chip, z, z' -> virtual chip) and ``kvfa.onnx`` (R(virtual), key rotation -> identity).
The key never enters a model: it only seeds the rotation, through keyed BLAKE2b.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.anonymizer import Anonymizer
from edge_agent.assets import asset_path
from edge_agent.face.align import align
from edge_agent.face.detect import Face
from edge_agent.keys import check_key, seeded_rng
from edge_agent.onnx_runtime import create_session
from edge_agent.recognizer import SAME_PERSON_THRESHOLD, SystemRecognizer
from edge_agent.rotation import band_rotation

log = logging.getLogger(__name__)

ROTATION_PURPOSE = "kfaar-proj-rot1"
FRAME_PURPOSE = "kfaar-tmpl-frm1"
DEFAULT_BUNDLE = "models/hpvfg"
PRECISIONS = ("fp32", "int8")


class BundleError(ValueError):
    """A model bundle is missing, incomplete or altered."""


def key_rotation(key: bytes, bands: tuple[int, ...]) -> np.ndarray:
    """Return the projector's rotation for a subject key; any changed bit changes all of it."""
    return band_rotation(bands, seeded_rng(check_key(key), ROTATION_PURPOSE))


def keyed_frame(key: bytes, dim: int = 128) -> np.ndarray:
    """Return the KEYED template's frame: a Haar-random rotation of all ``dim`` dimensions.

    P(z, k) keeps the mean component and each band's norm, a signature that links one
    person's templates across keys (D_sys 0.35 on LFW dev); turned by this rotation, a
    template under a fresh key is uniform on the sphere whatever z is (docs/MODEL_CARD.md).
    """
    return band_rotation((dim,), seeded_rng(check_key(key), FRAME_PURPOSE))


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def bands(self) -> tuple[int, ...]:
        return tuple(self.manifest["rotation_bands"])

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.path} has no {name}")
        return self.path / name

    @classmethod
    def load(cls, path: Path | None = None) -> Bundle:
        """Open a bundle folder (default: the packaged one) and check every file's digest."""
        path = Path(path) if path is not None else asset_path(DEFAULT_BUNDLE)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path} is not a model bundle: {exc}") from exc
        for name, digest in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
                raise BundleError(f"bundle file {f} is missing or does not match its manifest")
        return cls(path, manifest)


class HpvfgAnonymizer(Anonymizer):
    """Replace a face by its virtual face under a subject key; recover it with the key."""

    keyed = True

    def __init__(
        self,
        bundle: Bundle | None = None,
        precision: str = "fp32",
        recognizer: SystemRecognizer | None = None,
        threads: int = 0,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.bundle = bundle or Bundle.load()
        self.name = f"hpvfg-{self.bundle.version}:{precision}"
        # KVFA's operating point, calibrated at FAR 1e-3 on training faces by kfaar export.
        self.threshold = float(self.bundle.manifest.get("kvfa_threshold", SAME_PERSON_THRESHOLD))
        self.recognizer = recognizer or SystemRecognizer(threads=threads)
        gen = "generator.int8.onnx" if precision == "int8" else "generator.onnx"
        self._projector = create_session(self.bundle.file("projector.onnx"), threads)
        self._generator = create_session(self.bundle.file(gen), threads)
        # HPVFG 2.0 re-renders from z' alone, and its graph declares no z input.
        self._generator_inputs = {i.name for i in self._generator.get_inputs()}
        self._kvfa = create_session(self.bundle.file("kvfa.onnx"), threads)

    def rotation(self, key: bytes) -> np.ndarray:
        return key_rotation(key, self.bundle.bands)

    def virtual_identity(self, z: np.ndarray, key: bytes) -> np.ndarray:
        """Return P(z, k) for embeddings (N, 128)."""
        feed = {"z": np.asarray(z, np.float32), "rotation": self.rotation(key)}
        return self._projector.run(None, feed)[0]

    def keyed_template(self, z: np.ndarray, key: bytes) -> np.ndarray:
        """Return KEYED templates (N, 128): P(z, k) in the key's own frame, unit length."""
        zv = self.virtual_identity(z, key) @ keyed_frame(key, np.shape(z)[-1]).T
        return zv / np.maximum(np.linalg.norm(zv, axis=-1, keepdims=True), 1e-12)

    def transform_chips(self, chips: np.ndarray, key: bytes) -> np.ndarray:
        """Return virtual faces for aligned BGR chips (N, 150, 150, 3) of one key."""
        return self.generate(chips, self.recognizer.embed_chips(chips), key)

    def generate(self, chips: np.ndarray, z: np.ndarray, key: bytes) -> np.ndarray:
        """Return G(x, z, P(z, k)) for chips (N, 150, 150, 3) whose embeddings z are known.

        Callers that already hold z (to choose keys, or smoothed along a video track) skip
        the recognizer pass of :meth:`transform_chips`.
        """
        z = np.asarray(z, np.float32)
        feed = {
            "chip": chips.transpose(0, 3, 1, 2).astype(np.float32),
            "z": z,
            "z_virtual": self.virtual_identity(z, key),
        }
        feed = {k: v for k, v in feed.items() if k in self._generator_inputs}
        out = self._generator.run(None, feed)[0]  # (N, 3, 150, 150)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    def transform_chip(self, chip: np.ndarray, key: bytes | None) -> np.ndarray:
        if key is None:
            raise ValueError(f"anonymizer {self.name!r} needs a subject key")
        return self.transform_chips(chip[None], key)[0]

    def recover_embeddings(self, virtual: np.ndarray, key: bytes) -> np.ndarray:
        """KVFA on system embeddings of virtual faces (N, 128): the original identities."""
        feed = {"virtual": np.asarray(virtual, np.float32), "rotation": self.rotation(key)}
        return self._kvfa.run(None, feed)[0]

    def recover(self, image: np.ndarray, face: Face, key: bytes) -> np.ndarray:
        chip = align(image, face.landmarks, self.spec).chip
        return self.recover_embeddings(self.recognizer.embed_chips(chip[None]), key)[0]
