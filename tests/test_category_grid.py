"""The category grid: faces picked by measured and hand-picked traits, rendered with keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.face.detect import Face, FaceDetector
from edge_agent.face.image_io import load_image
from training.datasets import read_triplets
from training.evaluation.baselines import IdentityAnonymizer, ScrambleAnonymizer
from training.evaluation.category_grid import (
    CATEGORIES,
    LABEL_WIDTH,
    TILE,
    Traits,
    face_crop,
    measure,
    pick,
    read_hand_picked,
    render,
)

FACE = Face((60.0, 60.0, 120.0, 120.0), np.zeros((5, 2), np.float32), 0.9)


def _traits(rel: str, yaw=0.0, pitch=0.0, mouth=0.0, ita: float | None = 30.0) -> Traits:
    return Traits(rel, FACE, yaw, pitch, mouth, ita)


def test_pick_takes_the_clearest_cases_of_distinct_people() -> None:
    traits = [
        _traits("A/A_0001.jpg", yaw=40, ita=-20),
        _traits("A/A_0002.jpg", yaw=35, ita=-25),  # same person: only one of A's photos
        _traits("B/B_0001.jpg", yaw=-30, mouth=0.4, ita=60),
        _traits("C/C_0001.jpg", yaw=2, pitch=1, mouth=0.2),
        _traits("D/D_0001.jpg", yaw=20, ita=None),  # grey-scale: no skin tone
    ]
    chosen = pick(traits, {"glasses": ["C/C_0001.jpg", "Z/Z_0001.jpg"]}, k=2)
    assert list(chosen) == list(CATEGORIES)
    assert [t.rel for t in chosen["turned head"]] == ["A/A_0001.jpg", "B/B_0001.jpg"]
    assert [t.rel for t in chosen["frontal"]] == ["C/C_0001.jpg", "D/D_0001.jpg"]
    assert [t.rel for t in chosen["open mouth"]] == ["B/B_0001.jpg", "C/C_0001.jpg"]
    assert [t.rel for t in chosen["dark skin"]] == ["A/A_0002.jpg", "C/C_0001.jpg"]
    assert chosen["light skin"][0].rel == "B/B_0001.jpg"
    assert "D/D_0001.jpg" not in {t.rel for t in chosen["light skin"] + chosen["dark skin"]}
    assert [t.rel for t in chosen["glasses"]] == ["C/C_0001.jpg"]  # Z was not measured
    assert chosen["beard"] == []


def test_hand_picked_list_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nglasses A/A_0001.jpg\nhats B/B_0001.jpg\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3"):
        read_hand_picked(bad)


def test_shipped_hand_picked_faces_are_dev_faces(splits_dir: Path) -> None:
    triplets, _ = read_triplets(splits_dir / "lfw_dev_triplets.txt")
    dev = {p for t in triplets for p in (t.x1, t.x2, t.y)}
    picked = read_hand_picked()
    assert all(len(v) >= 3 for v in picked.values())
    assert {p for v in picked.values() for p in v} <= dev


def test_grid_shows_each_face_with_its_virtual_faces(sample_faces: Path) -> None:
    rels = [
        "Hugh_Grant/Hugh_Grant_0005.jpg",
        "Alan_Greenspan/Alan_Greenspan_0001.jpg",
        "Benazir_Bhutto/Benazir_Bhutto_0002.jpg",
    ]
    traits = measure(rels, sample_faces, FaceDetector())
    assert [t.rel for t in traits] == rels
    assert all(t.skin_ita is not None and -90 < t.skin_ita < 90 for t in traits)
    chosen = pick(traits, {"glasses": ["Alan_Greenspan/Alan_Greenspan_0001.jpg"]}, k=2)
    keyed = render(chosen, sample_faces, ScrambleAnonymizer(), seed=1, k=2)
    assert keyed.shape == (30 + len(CATEGORIES) * TILE, LABEL_WIDTH + 2 * 3 * TILE, 3)
    glasses_row = keyed[30 + 3 * TILE : 30 + 4 * TILE]
    original = glasses_row[:, LABEL_WIDTH : LABEL_WIDTH + TILE]
    image = load_image(sample_faces / rels[1])
    np.testing.assert_array_equal(original, face_crop(image, chosen["glasses"][0].face))
    key1 = glasses_row[:, LABEL_WIDTH + TILE : LABEL_WIDTH + 2 * TILE]
    key2 = glasses_row[:, LABEL_WIDTH + 2 * TILE : LABEL_WIDTH + 3 * TILE]
    assert np.abs(key1.astype(int) - original).mean() > 5  # scrambled
    assert np.abs(key1.astype(int) - key2).mean() > 5  # under another key
    plain = render(chosen, sample_faces, IdentityAnonymizer(), seed=1, k=2)
    assert plain.shape[1] == LABEL_WIDTH + 2 * 2 * TILE  # keyless: original and virtual
