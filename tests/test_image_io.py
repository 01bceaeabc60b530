"""Image reading: every kind of bad file gets a clear ImageError, odd formats are normalised."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.face.image_io import MAX_PIXELS, ImageError, as_bgr, decode_image, load_image


def test_reads_lfw_jpeg_as_bgr(lfw_dir: Path) -> None:
    path = next(lfw_dir.glob("*/*.jpg"))
    image = load_image(path)
    assert image.shape == (250, 250, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, cv2.imread(str(path)))


def test_grayscale_pgm_becomes_three_channels(att_dir: Path) -> None:
    image = load_image(att_dir / "s1" / "1.pgm")
    assert image.shape == (112, 92, 3)
    assert (image[..., 0] == image[..., 2]).all()


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 2] = 200
    rgba[..., 3] = 17
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    image = load_image(tmp_path / "a.png")
    assert image.shape == (20, 30, 3)
    assert (image[..., 2] == 200).all()


def test_sixteen_bit_png_keeps_high_byte(tmp_path: Path) -> None:
    deep = np.full((8, 8), 0xAB12, np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert (load_image(tmp_path / "d.png") == 0xAB).all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture\n", "not a readable image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "not a readable image"),  # truncated JPEG header
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_corrupt_real_jpeg_is_refused(lfw_dir: Path, tmp_path: Path) -> None:
    data = bytearray(next(lfw_dir.glob("*/*.jpg")).read_bytes())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bytes(data[:200]))  # headers survive, the image data does not
    with pytest.raises(ImageError):
        load_image(broken)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 2), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((2, 2, 2, 3), np.uint8),
        "not an array",
    ],
)
def test_as_bgr_rejects_unusable_arrays(array: object) -> None:
    with pytest.raises(ImageError):
        as_bgr(array)  # type: ignore[arg-type]


def test_oversized_image_is_refused() -> None:
    side = int(MAX_PIXELS**0.5) + 1
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (side, side), (0, 0))
    with pytest.raises(ImageError, match="exceeds"):
        as_bgr(huge)


def test_decode_names_the_source() -> None:
    with pytest.raises(ImageError, match="camera-7"):
        decode_image(b"garbage", "camera-7")
