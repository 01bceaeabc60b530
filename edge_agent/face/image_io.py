"""Read images from disk or bytes into the pipeline's format: uint8 BGR, H x W x 3."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Frames larger than this are refused rather than decoded (decompression bombs).
MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """Raised for a file or array that is not a usable image."""


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as contiguous uint8 BGR, converting grayscale and dropping alpha."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise ImageError(f"expected H x W, H x W x 3 or H x W x 4 pixels, got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"empty image {image.shape}")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageError(f"image of {image.shape[1]}x{image.shape[0]} exceeds {MAX_PIXELS} pixels")
    return np.ascontiguousarray(image)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, PGM, ...) to uint8 BGR."""
    if not data:
        raise ImageError(f"{name}: empty file")
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format)")
    if image.dtype == np.uint16:  # 16-bit PNG/TIFF: keep the high byte
        image = (image >> 8).astype(np.uint8)
    try:
        return as_bgr(image)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file to uint8 BGR, with a clear error for missing or broken files."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    return decode_image(path.read_bytes(), str(path))
