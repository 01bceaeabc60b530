"""Classify facial expressions with the FER2013 mini-XCEPTION model through onnxruntime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_agent.assets import asset_path
from edge_agent.onnx_runtime import create_session

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
# FER2013 faces are framed loosely (forehead and chin inside the frame), while detector boxes are
# tight, so grow the box by this fraction of its width/height on each side. The upstream demo adds
# fixed (20, 40) pixel offsets to Haar boxes; fractions keep its 1:2 ratio and scale with the box.
MARGIN = (0.1, 0.2)


def default_model_path() -> Path:
    """Return the packaged ONNX model's path."""
    return asset_path("fer_mini_xception.onnx", "training")


def _gray(image: np.ndarray) -> np.ndarray:
    """Return a uint8 HxW gray view of a gray or BGR uint8 image, rejecting anything else."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.size == 0:
        raise ValueError(f"image is empty, shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    else:
        raise ValueError(f"image must be HxW gray or HxWx3 BGR, got shape {image.shape}")
    return gray


def crop_box(height: int, width: int, box: Sequence[int], margin=MARGIN) -> tuple[slice, slice]:
    """Return row/column slices of box (x, y, w, h), grown by margin and clipped to the image."""
    try:
        x, y, w, h = (int(v) for v in box)
    except (TypeError, ValueError) as e:
        raise ValueError(f"box must be four integers (x, y, w, h), got {box!r}") from e
    if w <= 0 or h <= 0:
        raise ValueError(f"box {tuple(box)} is empty: width and height must be positive")
    dx, dy = round(w * margin[0]), round(h * margin[1])
    x0, x1 = max(x - dx, 0), min(x + w + dx, width)
    y0, y1 = max(y - dy, 0), min(y + h + dy, height)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"box {tuple(box)} lies outside the {width}x{height} image")
    return slice(y0, y1), slice(x0, x1)


def preprocess(image: np.ndarray, box: Sequence[int], margin=MARGIN) -> np.ndarray:
    """Return the model input for one face: float32 (1, 64, 64) scaled to [-1, 1]."""
    gray = _gray(image)
    rows, cols = crop_box(*gray.shape, box, margin)
    face = gray[rows, cols]
    # INTER_AREA averages when shrinking (no aliasing); bilinear is the better choice to enlarge
    shrink = face.shape[0] >= INPUT_SIZE and face.shape[1] >= INPUT_SIZE
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    face = cv2.resize(face, (INPUT_SIZE, INPUT_SIZE), interpolation=interp)
    return ((face.astype(np.float32) / 255.0 - 0.5) * 2.0)[None]  # the training scaling


class ExpressionClassifier:
    """Predict FER2013 expression probabilities for face boxes in uint8 images."""

    def __init__(self, model_path: str | Path | None = None):
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"expression model not found at {path}")
        # A tiny model: more threads cost more than they save.
        self.session = create_session(path, threads=1)
        (inp,) = self.session.get_inputs()
        if list(inp.shape[1:]) != [1, INPUT_SIZE, INPUT_SIZE]:
            raise ValueError(f"{path}: expected input (N, 1, 64, 64), model has {inp.shape}")
        self.input_name = inp.name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Return probabilities (N, 7) for preprocessed inputs (N, 1, 64, 64)."""
        (probs,) = self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})
        return probs

    def predict(self, image_bgr: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """Return the seven class probabilities for the face in box (x, y, w, h)."""
        return self.run(preprocess(image_bgr, box)[None])[0]

    def predict_batch(self, items: Sequence[tuple[np.ndarray, Sequence[int]]]) -> np.ndarray:
        """Return probabilities (N, 7) for (image, box) pairs in one session run."""
        if len(items) == 0:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        return self.run(np.stack([preprocess(image, box) for image, box in items]))

    def label(self, image_bgr: np.ndarray, box: Sequence[int]) -> str:
        """Return the most probable class name for the face in box."""
        return CLASSES[int(np.argmax(self.predict(image_bgr, box)))]
