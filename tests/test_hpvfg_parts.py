"""HPVFG building blocks: key rotations, the projector's inverse, export parity, training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_agent.assets import asset_path
from edge_agent.hpvfg import Bundle, BundleError, key_rotation
from edge_agent.keys import flip_bits, new_key
from training.chips import ChipSet, build_chip_set, list_images
from training.hpvfg.export import export_bundle, load_models
from training.hpvfg.generator import GeneratorConfig
from training.hpvfg.projector import RotationBasis, RotationProjector
from training.hpvfg.train import TrainConfig, Trainer, TripletSampler

BANDS = (8, 14, 22, 20, 10, 8, 8, 8, 8, 21)


def test_key_rotation_is_orthogonal_deterministic_and_bit_sensitive() -> None:
    key = new_key()
    q = key_rotation(key, BANDS)
    np.testing.assert_allclose(q @ q.T, np.eye(127), atol=1e-5)
    np.testing.assert_array_equal(q, key_rotation(key, BANDS))
    wrong = key_rotation(flip_bits(key, 1, np.random.default_rng(0)), BANDS)
    start = 0
    for n in BANDS:  # one wrong bit re-draws every block, not just one
        block = (slice(start, start + n),) * 2
        assert np.abs(q[block] - wrong[block]).max() > 0.1
        start += n


def test_rotation_projector_is_an_isometry_with_an_exact_inverse() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((400, 128)) + 3.0  # embeddings share a mean direction
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    basis = RotationBasis.fit(z)
    assert sum(basis.bands) == 127 and min(basis.bands) >= 8
    proj = RotationProjector(basis)
    zt = torch.from_numpy(z[:50]).float()
    rot = torch.from_numpy(basis.rotation(new_key()))
    zv = proj(zt, rot)
    torch.testing.assert_close(zv.norm(dim=1), torch.ones(50), atol=1e-5, rtol=0)
    torch.testing.assert_close(zv @ zv.T, zt @ zt.T, atol=1e-5, rtol=0)  # all angles kept
    torch.testing.assert_close(proj.inverse(zv, rot), zt, atol=1e-5, rtol=0)


def test_triplet_sampler_draws_valid_triplets() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 3])
    x1, x2, y = TripletSampler(labels, np.random.default_rng(0))(200)
    assert (labels[x1] == labels[x2]).all() and (x1 != x2).all()
    assert (labels[y] != labels[x1]).all()


@pytest.fixture(scope="module")
def sample_chips(tmp_path_factory) -> tuple[Path, Path]:
    """Chip sets from the bundled sample faces: train on some people, dev on the others."""
    root = asset_path("sample_faces")
    chips = build_chip_set(root, list_images(root))
    tmp = tmp_path_factory.mktemp("chips")
    is_dev = np.isin(chips.labels, np.arange(0, len(chips.names), 4))
    chips.subset(~is_dev).save(tmp / "train.npz")
    chips.subset(is_dev).save(tmp / "dev.npz")
    return tmp / "train.npz", tmp / "dev.npz"


def _tiny_config(chips: tuple[Path, Path], out: Path, kvfa_steps: int) -> TrainConfig:
    return TrainConfig(
        *chips,
        out,
        steps=2,
        kvfa_steps=kvfa_steps,
        batch=2,
        eval_every=2,
        dev_faces=6,
        generator=GeneratorConfig(n_pca=12, n_identity=6, hidden=32),
    )


@pytest.mark.slow
def test_training_runs_resumes_and_exports_with_onnx_parity(sample_chips, tmp_path) -> None:
    run = tmp_path / "run"
    ckpt = Trainer(_tiny_config(sample_chips, run, kvfa_steps=2)).fit()
    first = json.loads((run / "history.json").read_text())
    assert first[-1]["step"] == 4 and first[-1]["stage"] == "kvfa"
    generator, kvfa, _, _ = load_models(ckpt)
    Trainer(_tiny_config(sample_chips, run, kvfa_steps=4)).fit()  # resumes: 2 more KVFA steps
    generator2, kvfa2, _, _ = load_models(ckpt)
    assert json.loads((run / "history.json").read_text())[-1]["step"] == 6
    torch.testing.assert_close(generator.state_dict(), generator2.state_dict())
    assert not torch.equal(kvfa.refine[0].weight, kvfa2.refine[0].weight)

    bundle_dir = tmp_path / "bundle"
    manifest = export_bundle(ckpt, bundle_dir, ChipSet.load(sample_chips[0]), "0.0.0-test", 8)
    assert manifest["parity"]["generator.onnx"]["max_abs_px"] < 0.01
    assert manifest["parity"]["generator.int8.onnx"]["mean_abs_px"] < 3.0
    bundle = Bundle.load(bundle_dir)
    _, kvfa, basis, _ = load_models(ckpt)
    z = torch.nn.functional.normalize(torch.randn(3, 128), dim=1)
    rot = basis.rotation(new_key())
    sess = ort.InferenceSession(str(bundle.file("kvfa.onnx")), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"virtual": z.numpy(), "rotation": rot})[0]
    want = kvfa(z, torch.from_numpy(rot)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_tampered_bundle_is_refused(tmp_path) -> None:
    shipped = Bundle.load()
    copy = tmp_path / "bundle"
    shutil.copytree(shipped.path, copy)
    Bundle.load(copy)  # an exact copy is fine
    with (copy / "kvfa.onnx").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01")
    with pytest.raises(BundleError, match="does not match"):
        Bundle.load(copy)
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle.load(tmp_path)
