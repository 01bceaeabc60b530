"""HPVFG 2.0 round 2: each new loss term moves its own metric in a tiny CPU run.

Every comparison trains the same tiny renderer from the same seed for the same steps, once
with the term and once without; the term's metric must be better with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.chips import ChipSet, build_chip_set, list_images
from training.hpvfg2.landmarks import landmark_error, load_landmark_net
from training.hpvfg2.losses import band_energy, expression_loss, load_fer, near, r1_penalty
from training.hpvfg2.model import RenderConfig, RenderGenerator, resize_area
from training.hpvfg2.train import RenderTrainConfig, RenderTrainer

SAMPLES = Path(__file__).resolve().parent.parent / "edge_agent" / "assets" / "sample_faces"
TINY = RenderConfig(work=32, levels=2, base=8, style=32)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: on a shared machine, more threads cost far more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chips() -> ChipSet:
    return build_chip_set(SAMPLES, list_images(SAMPLES))


def trainer(chips: ChipSet, tmp: Path, **over) -> RenderTrainer:
    """A tiny trainer on the sample faces, SFace off, the given config overrides."""
    cfg = RenderTrainConfig(tmp, tmp, tmp, batch=2, **({"lr": 2e-3, "generator": TINY} | over))
    return RenderTrainer.create(cfg, chips, chips)


def train_steps(t: RenderTrainer, n: int) -> None:
    opt = torch.optim.Adam(t.generator.parameters(), lr=t.cfg.lr)
    for _ in range(n):
        t.generator_step(opt)


def rendered(t: RenderTrainer, chips: ChipSet, zv: torch.Tensor | None = None):
    """Originals and virtual chips (RGB -1..1, (N, 3, 150, 150)) of the first 16 samples."""
    x = torch.from_numpy(chips.chips[:16]).permute(0, 3, 1, 2).float()
    rgb = x.flip(1) / 127.5 - 1.0
    z = torch.from_numpy(chips.z[:16])
    with torch.no_grad():
        face = t.generator.render(rgb, z if zv is None else zv)
        return rgb, t.generator.composite(rgb, face), face


def test_identity_pulls_stop_at_their_margin() -> None:
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    b = a.detach().clone()
    near(a, b, 0.95).backward()  # identical: the margin is met, nothing pushes
    assert float(a.grad.abs().max()) == 0.0
    c = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    near(c, b, 0.95).backward()  # far apart: the pull is on
    assert float(c.grad.abs().max()) > 0.0


def test_landmark_term_lowers_landmark_error(chips, tmp_path) -> None:
    err = {}
    for w in (0.0, 1.0):
        t = trainer(chips, tmp_path, warmup_steps=100, w_landmarks=w, w_expression=0.0)
        train_steps(t, 12)
        rgb, virtual, _ = rendered(t, chips)
        err[w] = float(landmark_error(t.marks(virtual), t.marks(rgb)).mean())
    assert err[1.0] < 0.9 * err[0.0], err


def test_spectrum_term_restores_high_frequency_energy(chips, tmp_path) -> None:
    gap = {}
    for w in (0.0, 5.0):
        t = trainer(chips, tmp_path, warmup_steps=100, w_spectrum=w, w_expression=0.0)
        train_steps(t, 12)
        rgb, _, face = rendered(t, chips)
        real = resize_area(rgb, TINY.work)
        d = band_energy(face, t.core) - band_energy(real, t.core)  # (N, bands) log ratio
        gap[w] = float(d[:, 0].abs().mean())  # the finest band: skin texture, stubble
    assert gap[5.0] < 0.8 * gap[0.0], gap


def test_target_term_raises_the_virtual_faces_cosine_to_z_virtual(chips, tmp_path) -> None:
    # The other identity and realism terms off in both runs: only the fidelity pull differs.
    off = dict.fromkeys(("w_anonymity", "w_diversity", "w_differentiation", "w_synchronism"), 0.0)
    off |= dict.fromkeys(("w_identity_recon", "w_expression", "w_landmarks"), 0.0)
    off |= dict.fromkeys(("w_adversarial", "w_feature_match", "w_reconstruction"), 0.0)
    off |= dict.fromkeys(("w_structure", "w_spectrum"), 0.0)
    # One fixed batch under fixed keys: the tiny renderer fits it within a few steps.
    i1, i2, iy = np.array([0, 2]), np.array([1, 3]), np.array([10, 20])
    target = {}
    for w in (0.0, 4.0):
        cfg = {"lr": 1e-2, "generator": RenderConfig(work=64, levels=3, base=8, style=64)}
        t = trainer(chips, tmp_path, warmup_steps=0, w_target=w, **(off | cfg))
        rot = t.rotations(2)
        t.sample, t.rotations = (lambda b: (i1, i2, iy)), (lambda n, r=rot: r[:n])
        train_steps(t, 12)
        z = torch.from_numpy(chips.z[i1])
        with torch.no_grad():
            zv = t.projector(z, rot)
            rgb = torch.from_numpy(chips.chips[i1]).permute(0, 3, 1, 2).float().flip(1) / 127.5 - 1
            virtual = t.generator.composite(rgb, t.generator.render(rgb, zv))
            e = t.embed(t.to_bgr(virtual))
        target[w] = float(torch.nn.functional.cosine_similarity(e, zv).mean())
    assert target[4.0] > target[0.0] + 0.02, target


def test_r1_keeps_the_critic_smooth_at_real_faces(chips, tmp_path) -> None:
    x = torch.from_numpy(chips.chips[:16]).permute(0, 3, 1, 2).float().flip(1) / 127.5 - 1.0
    real = resize_area(x, TINY.work)
    fake = real.roll(3, dims=-1).flip(-2)  # a fixed, wrong-looking "render"
    grad = {}
    for gamma in (0.0, 10.0):
        torch.manual_seed(0)
        t = trainer(chips, tmp_path, r1_gamma=gamma, r1_every=1, d_lr=1e-3)
        logs = [t._critic_step(real, fake) for _ in range(15)]
        assert logs[-1]["critic"] < logs[0]["critic"], "the critic must learn to tell them apart"
        grad[gamma] = float(r1_penalty(t.critic, real).detach())
    assert grad[10.0] < 0.5 * grad[0.0], grad


def test_expression_term_lowers_expression_divergence(chips, tmp_path) -> None:
    kl = {}
    for w in (0.0, 5.0):
        t = trainer(chips, tmp_path, warmup_steps=100, w_expression=w, w_landmarks=0.0)
        train_steps(t, 12)
        rgb, virtual, _ = rendered(t, chips)
        fer = t.fer if t.fer is not None else load_fer()
        kl[w] = float(expression_loss(fer, virtual, rgb))
    assert kl[5.0] < kl[0.0], kl


def test_weights_from_before_landmark_conditioning_load_and_render_the_same() -> None:
    torch.manual_seed(0)
    old = RenderGenerator(RenderConfig(**{**TINY.__dict__, "landmarks": False})).eval()
    new = RenderGenerator(TINY).eval()
    new.load_state_dict(old.state_dict())  # no marks.* keys: the branch stays off
    chip = torch.rand(2, 3, 150, 150) * 255
    z = torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(new(chip, z, z), old(chip, z, z))


def test_shipped_landmark_regressor_agrees_with_dlib_on_unseen_faces(chips) -> None:
    pytest.importorskip("dlib")
    from training.hpvfg2.landmarks_fit import label_chips, to_input

    ref = torch.from_numpy(label_chips(chips.chips[:24]))  # sample faces: dev identities
    with torch.no_grad():
        pred = load_landmark_net()(to_input(chips.chips[:24]))
    nme = float(landmark_error(pred, ref).mean())
    assert nme < 0.08, f"landmark error {nme:.3f} of the outer-eye distance"


def test_fer_network_in_torch_matches_the_shipped_onnx_model() -> None:
    import onnxruntime as ort

    from training.measure.expression import default_model_path

    x = np.random.default_rng(2).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        out = load_fer()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)
