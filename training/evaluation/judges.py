"""Independent recognizers that judge whether two faces show the same identity.

A judge embeds faces with its own alignment and scores pairs, higher meaning more alike.
The harness locates each face once, on the original frame, and reuses that location for
the anonymized frame: pose is preserved, so the face is in the same place, and a judge
that cannot find a face on its own must not turn that into "anonymity" for free.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.align import ARCFACE_112, align
from edge_agent.face.detect import Face
from edge_agent.onnx_runtime import create_session
from edge_agent.progress import progress
from training.evaluation.judge_base import FaceRef, Judge

log = logging.getLogger(__name__)


def locate(image: np.ndarray, face: Face) -> FaceRef:
    """Find dlib's own box for this face, falling back to YuNet's box when HOG misses it."""
    hog = _dlib_models()[0]
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h / 2
    near = [d for d in hog(rgb, 1) if np.hypot(d.center().x - cx, d.center().y - cy) < w / 3]
    if near:
        d = near[0]
        return FaceRef(face, (d.left(), d.top(), d.right(), d.bottom()), True)
    # HOG boxes are square, 0.85 of YuNet's longer side and 0.035 of its height lower
    # (means over 200 LFW faces where both detectors fired).
    side, cy = 0.85 * max(w, h), cy + 0.035 * h
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return FaceRef(face, box, False)


_DLIB = None


def _dlib_models():
    global _DLIB
    if _DLIB is None:
        import dlib

        from training.recognizer.dlib_format import find_model_file

        _DLIB = (
            dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(find_model_file("shape_predictor_5_face_landmarks.dat"))),
            dlib.face_recognition_model_v1(str(find_model_file())),
        )
    return _DLIB


def dlib_chip(image: np.ndarray, ref: FaceRef) -> np.ndarray:
    """Return dlib's own 150x150 RGB chip of the face at ``ref``."""
    import dlib

    _, sp5, _ = _dlib_models()
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    shape = sp5(rgb, dlib.rectangle(*ref.dlib_box))
    return dlib.get_face_chip(rgb, shape, size=150, padding=0.25)


def _dlib_embed(item: tuple[np.ndarray, FaceRef]) -> np.ndarray:
    image, ref = item
    facerec = _dlib_models()[2]
    return np.asarray(facerec.compute_face_descriptor(dlib_chip(image, ref)), np.float32)


class DlibJudge(Judge):
    """dlib's ResNet recognizer with its own 5-point alignment; Euclidean distance."""

    name = "dlib"
    cache_id = "dlib-resnet-v1-sp5-chip150"
    metric = "euclidean distance (same person below the threshold)"
    same_person_threshold = 0.6  # dlib's documented rule

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        _dlib_models()  # fail early, with a clear error, if dlib is missing

    def embed(self, items: list[tuple[np.ndarray, FaceRef]], desc: str = "judge") -> np.ndarray:
        if not items:
            return np.zeros((0, 128), np.float32)
        if self.workers <= 1 or len(items) < 8:
            out = [_dlib_embed(it) for it in progress(items, desc=desc)]
        else:
            # forkserver: forking a process that runs onnxruntime threads can deadlock.
            context = multiprocessing.get_context("forkserver")
            with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
                mapped = pool.map(_dlib_embed, items, chunksize=4)
                out = list(progress(mapped, total=len(items), desc=desc))
        return np.stack(out)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return -np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)

    def to_native(self, score: float) -> float:
        return -score

    def from_native(self, value: float) -> float:
        return -value


class OnnxJudge(Judge):
    """Any ArcFace-style recognizer: 1x3x112x112 RGB, ArcFace 5-point alignment, (x-127.5)/128."""

    metric = "cosine similarity (same person above the threshold)"

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.session = create_session(path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        if len(inp.shape) != 4 or inp.shape[1] not in (3, "3") or inp.shape[2:] != [112, 112]:
            raise ValueError(f"{path}: expected input (N, 3, 112, 112), model has {inp.shape}")
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.name = f"onnx:{path.name}"
        self.cache_id = "onnx-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def _prep(self, image: np.ndarray, ref: FaceRef) -> np.ndarray:
        chip = align(image, ref.face.landmarks, ARCFACE_112).chip
        rgb = cv2.cvtColor(chip, cv2.COLOR_BGR2RGB).astype(np.float32)
        return ((rgb - 127.5) / 128.0).transpose(2, 0, 1)

    def embed(self, items: list[tuple[np.ndarray, FaceRef]], desc: str = "judge") -> np.ndarray:
        batch = self.fixed_batch or 32
        out = []
        for i in progress(range(0, len(items), batch), desc=desc):
            chunk = [self._prep(img, ref) for img, ref in items[i : i + batch]]
            x = np.stack(chunk)
            if self.fixed_batch and len(chunk) < batch:
                x = np.concatenate([x, np.zeros((batch - len(chunk), *x.shape[1:]), x.dtype)])
            out.append(self.session.run(None, {self.input_name: x})[0][: len(chunk)])
        if not out:
            return np.zeros((0, 1), np.float32)
        return np.concatenate(out).reshape(len(items), -1).astype(np.float32)

    def score(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a), np.asarray(b)
        na = np.maximum(np.linalg.norm(a, axis=-1), 1e-12)
        nb = np.maximum(np.linalg.norm(b, axis=-1), 1e-12)
        return (a * b).sum(-1) / (na * nb)


def make_judge(spec: str, workers: int | None = None) -> Judge:
    """Build a judge from ``dlib``, ``sface[:PATH]``, ``facenet[:PATH]`` or ``onnx:PATH``."""
    from training.evaluation.opencv_judges import FaceNetJudge, SFaceJudge

    name, _, arg = spec.partition(":")
    if spec == "dlib":
        return DlibJudge(workers)
    if name == "sface":
        return SFaceJudge(arg or None)
    if name == "facenet":
        return FaceNetJudge(arg or None)
    if name == "onnx" and arg:
        return OnnxJudge(Path(arg).expanduser())
    raise ValueError(
        f"unknown judge {spec!r}: use 'dlib', 'sface[:PATH]', 'facenet[:PATH]' or 'onnx:PATH'"
    )


def make_judges(specs: str, workers: int | None = None) -> list[Judge]:
    """Build the judges of a comma-separated list such as ``dlib,sface,facenet``."""
    parts = [s.strip() for s in specs.split(",")]
    if not all(parts):
        raise ValueError(f"empty judge in {specs!r}")
    judges = [make_judge(s, workers) for s in parts]
    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"judge listed twice in {specs!r}")
    return judges
