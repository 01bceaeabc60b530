"""Read images from disk or bytes into the pipeline's format: uint8 BGR, H x W x 3.

JPEGs are decoded by libjpeg-turbo through simplejpeg in strict mode and PNGs have their
chunk checksums verified first: OpenCV's decoders print libjpeg/libpng warnings straight
to stderr (no logging setting silences them) and may return a half-decoded picture, so a
corrupt file becomes one clear ImageError instead of noise and a "no face found".
"""

from __future__ import annotations

import struct
import zlib
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


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG colour spaces simplejpeg converts itself; others (CMYK, YCCK) go to OpenCV.
_JPEG_SPACES = {"Gray": "GRAY", "YCbCr": "BGR", "RGB": "BGR"}


def _decode_jpeg(data: bytes, name: str) -> np.ndarray | None:
    """Decode a JPEG strictly: any libjpeg warning (corrupt data) is an ImageError."""
    import simplejpeg  # here, not at the top: trainers that only align chips run without it

    try:
        height, width, space, _ = simplejpeg.decode_jpeg_header(data)
        if height * width > MAX_PIXELS:  # refused before any pixel is decoded
            raise ImageError(f"{name}: image of {width}x{height} exceeds {MAX_PIXELS} pixels")
        if space not in _JPEG_SPACES:
            return None
        return simplejpeg.decode_jpeg(data, colorspace=_JPEG_SPACES[space], strict=True)
    except ImageError:
        raise
    except ValueError as exc:  # libjpeg-turbo's reason, without its function name
        raise ImageError(f"{name}: corrupt JPEG ({str(exc).split('(): ')[-1]})") from None


def _check_png(data: bytes, name: str) -> None:
    """Walk the PNG chunks and verify their CRCs, up to IEND."""
    pos = len(PNG_MAGIC)
    while True:
        if pos + 12 > len(data):
            raise ImageError(f"{name}: corrupt PNG (truncated)")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageError(f"{name}: corrupt PNG (truncated {kind.decode('latin-1')} chunk)")
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != crc:
            raise ImageError(f"{name}: corrupt PNG (bad checksum in {kind.decode('latin-1')})")
        if kind == b"IEND":
            return
        pos = end + 4


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, PGM, ...) to uint8 BGR."""
    if not data:
        raise ImageError(f"{name}: empty file")
    image = None
    if data.startswith(JPEG_MAGIC):
        image = _decode_jpeg(data, name)
    elif data.startswith(PNG_MAGIC):
        _check_png(data, name)
    if image is None:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
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
