"""Realism measures on real photos: the real-versus-virtual classifier, MesoNet, the gallery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from training.datasets import identity_of, models_root
from training.evaluation import forensics, realism
from training.evaluation.gallery import TrainingGallery
from training.evaluation.judges import DlibJudge, locate


@pytest.fixture(scope="module")
def faces(sample_faces: Path) -> list[tuple[str, np.ndarray, object]]:
    """Return (relative path, image, YuNet face) for every sample photo."""
    detector = FaceDetector()
    out = []
    for path in sorted(sample_faces.glob("*/*.jpg")):
        image = load_image(path)
        out.append((f"{path.parent.name}/{path.name}", image, detector.primary(image)))
    return out


def _blur_face(image: np.ndarray, face, sigma: float) -> np.ndarray:
    x, y, w, h = (int(v) for v in face.box)
    out = image.copy()
    out[y : y + h, x : x + w] = cv2.GaussianBlur(image, (0, 0), sigma)[y : y + h, x : x + w]
    return out


def test_lbp_codes_are_rotation_invariant_uniform_patterns() -> None:
    flat = np.full((5, 5), 7, np.uint8)
    assert (realism.lbp_codes(flat)[1:-1, 1:-1] == 8).all()  # every neighbour >= centre
    spot = flat.copy()
    spot[2, 2] = 200  # a bright dot: no neighbour reaches it
    assert realism.lbp_codes(spot)[2, 2] == 0
    checker = (np.indices((5, 5)).sum(0) % 2 * 255).astype(np.uint8)
    assert realism.lbp_codes(checker)[2, 3] == 9  # bright centre, alternating: not uniform
    assert realism.LBP_MAP.max() == 9 and len(np.unique(realism.LBP_MAP)) == 10


def test_blur_moves_spectral_power_to_low_frequencies(faces) -> None:
    gray = cv2.cvtColor(faces[0][1], cv2.COLOR_BGR2GRAY)[50:200, 50:200]
    sharp = realism.radial_spectrum(gray)
    blurred = realism.radial_spectrum(cv2.GaussianBlur(gray, (0, 0), 2))
    assert sharp.shape == (realism.SPECTRUM_BANDS,)
    assert blurred[-3:].sum() < sharp[-3:].sum() - 3  # log shares: orders of magnitude


def test_classifier_finds_blurred_faces_and_not_mirrored_ones(faces) -> None:
    groups = np.array([identity_of(rel) for rel, _, _ in faces] * 2)
    labels = np.r_[np.zeros(len(faces)), np.ones(len(faces))]

    def features(images: list[np.ndarray]) -> np.ndarray:
        return np.stack(
            [
                realism.chip_features(im, f.landmarks)
                for im, (_, _, f) in zip(images, faces, strict=True)
            ]
        )

    real = features([im for _, im, _ in faces])
    blurred = features([_blur_face(im, f, 2.5) for _, im, f in faces])
    x = np.vstack([real, blurred])
    assert realism.cross_validated_auc(x, labels, groups, "logreg") > 0.9
    # Mirror images have the same statistics: no classifier can tell them apart.
    detector, mirrored = FaceDetector(), []
    for _, im, _ in faces:
        flipped = cv2.flip(im, 1)
        mirrored.append(realism.chip_features(flipped, detector.primary(flipped).landmarks))
    m = np.stack(mirrored)
    auc = realism.cross_validated_auc(np.vstack([real, m]), labels, groups, "logreg")
    assert auc < 0.75
    with pytest.raises(ValueError, match="both classes"):
        realism.cross_validated_auc(real, np.zeros(len(real)), groups[: len(real)], "logreg")


@pytest.fixture(scope="module")
def mesonets() -> forensics.MesoNets:
    try:
        return forensics.MesoNets()
    except FileNotFoundError as exc:
        if os.environ.get("KFAAR_REQUIRE_DATA") and models_root().exists():
            pytest.fail(f"{exc}; $KFAAR_REQUIRE_DATA is set, so missing models are a failure")
        pytest.skip(str(exc))


def test_meso_crop_levels_the_eyes(faces) -> None:
    _, image, face = faces[0]
    crop = forensics.meso_crop(image, face.landmarks)
    assert crop.shape == (256, 256, 3)
    # Rotating the photo about the nose rotates the landmarks with it: the crop stays put.
    nose = tuple(float(v) for v in face.landmarks[2])
    turn = cv2.getRotationMatrix2D(nose, 15, 1.0)
    rotated = cv2.warpAffine(image, turn, image.shape[1::-1])
    points = np.c_[face.landmarks, np.ones(5)] @ turn.T
    again = forensics.meso_crop(rotated, points)
    centre = slice(64, 192)
    diff = np.abs(again[centre, centre].astype(int) - crop[centre, centre].astype(int))
    assert diff.mean() < 6


def test_mesonets_call_blurred_faces_fake(mesonets, faces) -> None:
    crops = [forensics.meso_crop(im, f.landmarks) for _, im, f in faces]
    blurred = [
        forensics.meso_crop(cv2.GaussianBlur(im, (0, 0), 3), f.landmarks) for _, im, f in faces
    ]
    real = forensics.summarize(mesonets.fake_scores(crops))
    fake = forensics.summarize(mesonets.fake_scores(blurred))
    assert set(real) == set(forensics.DETECTORS)
    assert real["MesoInception_F2F"]["mean_fake"] < 0.2  # README: best calibrated on LFW
    for name in forensics.DETECTORS:
        assert fake[name]["mean_fake"] > real[name]["mean_fake"], name


def test_missing_mesonets_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Meso4_DF"):
        forensics.MesoNets(tmp_path)


def test_gallery_recognises_its_own_people_only(sample_faces: Path, faces) -> None:
    """A face of a gallery person matches; people outside the gallery do not."""
    by_person: dict[str, list[Path]] = {}
    for rel, _, _ in faces:
        by_person.setdefault(identity_of(rel), []).append(sample_faces / rel)
    twice = sorted(p for p, files in by_person.items() if len(files) == 2)
    inside = {p: by_person[p][:1] for p in twice[:4]}  # first photo in the gallery
    gallery = TrainingGallery(inside)
    assert gallery.names == sorted(inside)
    judge = DlibJudge(workers=1)
    probes_in = [by_person[p][1] for p in inside]  # their other photo
    probes_out = [files[0] for p, files in by_person.items() if p not in inside]
    detector = FaceDetector()

    def embed(paths: list[Path]) -> np.ndarray:
        items = []
        for path in paths:
            image = load_image(path)
            items.append((image, locate(image, detector.primary(image))))
        return judge.embed(items)

    share_in, _ = gallery.match_share(judge, embed(probes_in))
    share_out, _ = gallery.match_share(judge, embed(probes_out))
    assert share_in == 1.0
    assert share_out <= 0.25


@pytest.mark.slow
def test_eval_reports_realism_and_real_people(sample_faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    # A "training set" whose one person is a sample person under another name: the
    # check must find that person's original photos in it.
    gallery = tmp_path / "gallery"
    (gallery / "Someone_Else").mkdir(parents=True)
    photo = sample_faces / "Alan_Greenspan" / "Alan_Greenspan_0005.jpg"
    (gallery / "Someone_Else" / "Someone_Else_0001.jpg").write_bytes(photo.read_bytes())
    argv = ["eval", "--anonymizer", "blur:4", "--seed", "3", "--workers", "1", "--realism"]
    argv += ["--gallery", str(gallery), "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["realism_n"] == 24 and r["realism_auc"] > 0.9  # blur is easy to spot
    assert set(r["realism_auc_detail"]) == {
        f"{m}/{f}" for m in ("logreg", "gbm") for f in ("handcrafted", "embedding", "all")
    }
    assert r["gallery_identities"] == 1
    found = r["real_person_match"]["dlib"]
    assert found["original"] >= 2 / 24  # both photos of Alan Greenspan
    md = out.with_suffix(".md").read_text()
    assert "## Realism" in md and "## No real person inside" in md
