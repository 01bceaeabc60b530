"""Image reading: every kind of bad file gets a clear ImageError, odd formats are normalised."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.face.image_io import MAX_PIXELS, ImageError, as_bgr, decode_image, load_image


def test_reads_lfw_jpeg_as_bgr(sample_photos: list[Path]) -> None:
    path = sample_photos[0]
    image = load_image(path)
    assert image.shape == (250, 250, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, cv2.imread(str(path)))


def test_grayscale_pgm_becomes_three_channels(sample_photos: list[Path], tmp_path: Path) -> None:
    gray = cv2.resize(cv2.imread(str(sample_photos[0]), cv2.IMREAD_GRAYSCALE), (92, 112))
    cv2.imwrite(str(tmp_path / "1.pgm"), gray)  # the AT&T faces' format and size
    image = load_image(tmp_path / "1.pgm")
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
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt JPEG"),  # truncated JPEG header
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def _damage(data: bytes, how: str) -> bytes:
    if how == "headers only":
        return data[:200]
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    if how == "cut scan, end marker kept":  # libjpeg: "premature end of data segment"
        return data[: len(data) // 2] + b"\xff\xd9"
    middle = len(data) // 2  # overwritten scan data: the same warning
    return data[:middle] + bytes(range(50)) + data[middle + 50 :]


@pytest.mark.parametrize(
    "how", ["headers only", "truncated", "cut scan, end marker kept", "overwritten scan"]
)
def test_corrupt_real_jpeg_is_refused_without_decoder_noise(
    sample_photos: list[Path], tmp_path: Path, capfd, how: str
) -> None:
    # OpenCV decodes most of these into a half-grey picture and libjpeg prints its warning
    # straight to the process's stderr; both must be gone.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(_damage(sample_photos[0].read_bytes(), how))
    with pytest.raises(ImageError, match=r"broken\.jpg: corrupt JPEG \(.+\)"):
        load_image(broken)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("where", ["truncated", "bad checksum"])
def test_corrupt_png_is_refused_without_decoder_noise(
    sample_photos: list[Path], tmp_path: Path, capfd, where: str
) -> None:
    data = bytearray(cv2.imencode(".png", load_image(sample_photos[0]))[1].tobytes())
    if where == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    (tmp_path / "broken.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt PNG"):
        load_image(tmp_path / "broken.png")
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("variant", ["grayscale", "progressive"])
def test_jpeg_variants_decode_as_opencv_does(
    sample_photos: list[Path], tmp_path: Path, variant: str
) -> None:
    image = cv2.imread(str(sample_photos[0]))
    if variant == "grayscale":
        _, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    else:
        _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    (tmp_path / "v.jpg").write_bytes(data.tobytes())
    ours = load_image(tmp_path / "v.jpg")
    assert ours.shape == (250, 250, 3)
    np.testing.assert_array_equal(ours, cv2.imread(str(tmp_path / "v.jpg")))


def test_jpeg_bomb_is_refused_from_its_header(sample_photos: list[Path]) -> None:
    data = bytearray(sample_photos[0].read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = b"\xfd\xe8\xfd\xe8"  # 65000 x 65000
    with pytest.raises(ImageError, match="exceeds"):
        decode_image(bytes(data), "bomb.jpg")


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
