"""The paper's equations as properties of the shipped ONNX models, on held-out real faces.

Faces come from the 8 triplets shipped with the sample faces, taken from the LFW dev
triplets (no person in two triplets), whose identities took no part in training; keys are
fixed so the run is repeatable. "Same person" is the system recognizer's operating rule
(cosine >= SAME_PERSON_THRESHOLD); KVFA decisions use the bundle's calibrated threshold.
The bounds are what the shipped models met on the first 24 dev triplets, with some slack
(these 8 do better); several are below the project's goals, and docs/MODEL_CARD.md reports
the full dev set against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import flip_bits
from edge_agent.recognizer import SAME_PERSON_THRESHOLD as SAME
from training.datasets import read_triplets
from training.evaluation.metrics import auc


@dataclass
class Faces:
    """System embeddings (N, 128) of originals and virtual faces, and KVFA recoveries."""

    x1: np.ndarray
    x2: np.ndarray
    y: np.ndarray
    v11: np.ndarray  # G(x1, kA)
    v21: np.ndarray  # G(x2, kA)
    vy: np.ndarray  # G(y, kA)
    v12: np.ndarray  # G(x1, kA2)
    r11: np.ndarray  # I(G(x1, kA), kA)
    r22: np.ndarray  # I(G(x2, kA2), kA2)
    wrong: dict[int, np.ndarray]  # bits -> I(G(x1, kA), kA with bits flipped)
    kvfa_threshold: float


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def _measure(anon: HpvfgAnonymizer, root: Path, triplets: list) -> Faces:
    detector, rng = FaceDetector(), np.random.default_rng(0)
    rows: dict[str, list] = {
        k: [] for k in Faces.__dataclass_fields__ if k.startswith(("x", "y", "v", "r"))
    }
    wrong: dict[int, list] = {b: [] for b in (1, 3, 5, 16)}
    embed = anon.recognizer.embed
    for t in triplets:
        (i1, f1), (i2, f2), (iy, fy) = (
            (img, detector.primary(img))
            for img in (load_image(root / p) for p in (t.x1, t.x2, t.y))
        )
        ka, ka2 = rng.bytes(32), rng.bytes(32)  # fixed test keys; products use new_key()
        g11, g22 = anon.anonymize(i1, f1, ka), anon.anonymize(i2, f2, ka2)
        for name, (img, face) in {
            "x1": (i1, f1),
            "x2": (i2, f2),
            "y": (iy, fy),
            "v11": (g11, f1),
            "v21": (anon.anonymize(i2, f2, ka), f2),
            "vy": (anon.anonymize(iy, fy, ka), fy),
            "v12": (anon.anonymize(i1, f1, ka2), f1),
        }.items():
            rows[name].append(embed(img, face.landmarks))
        rows["r11"].append(anon.recover(g11, f1, ka))
        rows["r22"].append(anon.recover(g22, f2, ka2))
        for bits in wrong:
            wrong[bits].append(anon.recover(g11, f1, flip_bits(ka, bits, rng)))
    return Faces(
        **{k: np.stack(v) for k, v in rows.items()},
        wrong={b: np.stack(v) for b, v in wrong.items()},
        kvfa_threshold=anon.threshold,
    )


@pytest.fixture(scope="module", params=["fp32", "int8"])
def faces(request, sample_faces: Path) -> Faces:
    triplets, _ = read_triplets(sample_faces / "triplets.txt")
    return _measure(HpvfgAnonymizer(precision=request.param), sample_faces, triplets)


def test_anonymity_the_virtual_face_is_someone_else(faces: Faces) -> None:
    same = np.concatenate([_cos(faces.v11, faces.x1), _cos(faces.vy, faces.y)]) >= SAME
    assert same.mean() <= 0.05


def test_synchronism_one_key_one_virtual_person(faces: Faces) -> None:
    genuine, impostor = _cos(faces.v11, faces.v21), _cos(faces.v11, faces.vy)
    assert auc(genuine, impostor) >= 0.8  # goal 0.99; 24 dev: 0.85, 0.95; these: 1.0, 1.0


def test_diversity_another_key_another_virtual_person(faces: Faces) -> None:
    # Goal 0.95; on 24 dev triplets 0.71 (fp32) and 0.88 (int8); here 0.88 for both.
    assert (_cos(faces.v11, faces.v12) < SAME).mean() >= 0.6


def test_differentiation_two_people_stay_two_under_one_key(faces: Faces) -> None:
    assert (_cos(faces.v11, faces.vy) < SAME).mean() >= 0.95


def test_kvfa_recovers_the_original_identity_with_the_key(faces: Faces) -> None:
    recovered, impostor = _cos(faces.r11, faces.x1), _cos(faces.r11, faces.y)
    assert auc(recovered, impostor) >= 0.8  # 24 dev: 0.90, 0.86; these: 0.97: KVFA is weak
    assert recovered.mean() > impostor.mean() + 0.03


def test_kvfa_matches_across_keys(faces: Faces) -> None:
    """I(G(x1,k1),k1) ~ I(G(x2,k2),k2): one person, two keys, one recovered identity."""
    cross = _cos(faces.r11, faces.r22)
    other = _cos(faces.r11, faces.y)
    assert auc(cross, other) >= 0.8  # 24 dev: 0.89, 0.90; these: 0.97, 0.92


@pytest.mark.parametrize("bits", [1, 3, 5, 16])
def test_no_wrong_key_recovers_the_identity(faces: Faces, bits: int) -> None:
    scores = _cos(faces.wrong[bits], faces.x1)
    assert (scores < faces.kvfa_threshold).all()
    assert scores.mean() < _cos(faces.r11, faces.x1).mean() - 0.02
