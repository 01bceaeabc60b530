"""Baseline anonymizers: frame size kept, face changed, keys required and honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.face.align import DLIB_150, align
from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.keys import new_key
from training.evaluation.baselines import ScrambleAnonymizer, make_anonymizer


@pytest.fixture(scope="module")
def portrait(sample_photos: list[Path]):
    image = load_image(sample_photos[0])
    return image, FaceDetector().primary(image)


@pytest.mark.parametrize("spec", ["identity", "blur", "blur:3", "pixelate", "pixelate:6"])
def test_keyless_baselines_keep_the_frame_and_touch_only_the_face(portrait, spec: str) -> None:
    image, face = portrait
    out = make_anonymizer(spec).anonymize(image, face)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[:4, :4] == image[:4, :4]).all()  # background corners untouched
    x, y, w, h = face.int_box()
    changed = np.abs(out[y : y + h, x : x + w].astype(int) - image[y : y + h, x : x + w]).mean()
    assert changed < 3 if spec == "identity" else changed > 3


def test_scramble_needs_a_valid_key(portrait) -> None:
    image, face = portrait
    scramble = make_anonymizer("scramble")
    with pytest.raises(ValueError, match="needs a subject key"):
        scramble.anonymize(image, face)
    with pytest.raises(ValueError, match="32 bytes"):
        scramble.anonymize(image, face, b"short")


def test_scramble_is_inverted_only_by_its_key(portrait) -> None:
    image, face = portrait
    chip = align(image, face.landmarks, DLIB_150).chip
    scramble, key = ScrambleAnonymizer(), new_key()
    mixed = scramble.transform_chip(chip, key)
    assert not np.array_equal(mixed, chip)
    np.testing.assert_array_equal(scramble.unscramble(mixed, key), chip)
    assert not np.array_equal(scramble.unscramble(mixed, new_key()), chip)
    other = scramble.transform_chip(chip, new_key())
    assert (mixed != other).mean() > 0.5  # another key, another arrangement


@pytest.mark.parametrize(
    "spec",
    ["blur:0", "pixelate:0", "pixelate:x", "mosaic", "identity:2", "hpvfg:fp16", "nowhere:int8"],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        make_anonymizer(spec)
