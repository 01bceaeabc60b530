"""HPVFG 2.0 run plumbing: payload, --init, --profile, snapshots, rotations, native SFace."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge_agent.assets import asset_path
from edge_agent.rotation import band_rotation
from training.chips import ChipSet, build_chip_set, list_images
from training.datasets import data_root
from training.hpvfg.projector import RotationBasis
from training.hpvfg.train import band_rotations, householder_q
from training.hpvfg2.augment import diff_augment
from training.hpvfg2.pack import pack_onnx_fp16
from training.hpvfg2.profile import PhaseTimer
from training.hpvfg2.slim import prune_snapshots, snapshots_to_keep

ROOT = Path(__file__).resolve().parent.parent
# What the GPU image lacks (the trainer must not import them), plus the repository itself:
# only the payload's own copy of the code may load.
SITECUSTOMIZE = """
import importlib.abc, sys
BLOCKED = {"simplejpeg", "nacl", "grpc", "faiss", "usearch", "psycopg", "flwr"}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not on the GPU image", name=name)
def _editable(f):  # an editable install's finder: a class, or an instance of one
    return (f if isinstance(f, type) else type(f)).__module__.startswith("__editable__")
sys.meta_path[:] = [_Block()] + [f for f in sys.meta_path if not _editable(f)]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != ROOT]
""".replace("ROOT", repr(str(ROOT)))


@pytest.fixture(scope="module")
def sample_chips() -> ChipSet:
    root = asset_path("sample_faces")
    return build_chip_set(root, list_images(root))


def _sface() -> Path | None:
    env = os.environ.get("KFAAR_SFACE_MODEL")
    path = (
        Path(env)
        if env
        else data_root().parent / "models/judges/face_recognition_sface_2021dec.onnx"
    )
    return path if path.is_file() else None


def _tiny_init(chips: ChipSet, path: Path) -> RotationBasis:
    """Write slim-format weights for the tiny model: a marked layer, a foreign entry, no critic."""
    from training.hpvfg.kvfa import KVFA, KVFAConfig
    from training.hpvfg2.model import RenderConfig, RenderGenerator

    torch.manual_seed(7)
    z = chips.z + 0.05 * np.random.default_rng(7).standard_normal(chips.z.shape).astype(np.float32)
    basis = RotationBasis.fit(z / np.linalg.norm(z, axis=1, keepdims=True))
    g = RenderGenerator(RenderConfig(work=32, levels=2, base=8, style=32))
    with torch.no_grad():
        g.to_rgb.bias.fill_(0.5)
    gen = {k: v.half() for k, v in g.state_dict().items()} | {"extra.weight": torch.ones(3)}
    state = {
        "step": 7, "config": {}, "basis": dataclasses.asdict(basis), "history": [],
        "generator": gen, "kvfa": KVFA(basis, KVFAConfig()).state_dict(),
    }  # fmt: skip
    torch.save(state, path)
    return basis


def test_payload_trains_alone_without_what_the_gpu_image_lacks(sample_chips, tmp_path) -> None:
    from training.hpvfg2.payload import build_payload

    basis = _tiny_init(sample_chips, tmp_path / "init.pt")
    half = np.isin(sample_chips.labels, np.arange(0, len(sample_chips.names), 2))
    train = {"lfw": sample_chips.subset(half), "celeba": sample_chips.subset(~half)}
    payload = tmp_path / "payload"
    manifest = build_payload(
        payload, train, sample_chips, asset_path("models/dlib_resnet_v1-port1.onnx"), _sface(),
        tmp_path / "init.pt", side=112,
    )  # fmt: skip
    assert manifest["mib"] <= 60
    assert manifest["chips"]["train"] == len(sample_chips)
    assert manifest["chips"]["train_lfw"] + manifest["chips"]["train_celeba"] == len(sample_chips)
    files = set(manifest["files"])
    assert {"run.sh", "init.fp16.pt", "pack/train.npz", "pack/system.fp16.onnx"} <= files
    assert "training/hpvfg2/run.py" in files and "training/hpvfg2/profile.py" in files
    assert not any(f.startswith(("auth_service/", "tests/")) for f in files)

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = os.environ | {"PYTHONPATH": str(site), "PYTHON": sys.executable}
    env |= {"OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "BUDGET_S": "600"}
    env["KFAAR_NO_PROGRESS"] = "1"
    for module in ("simplejpeg", "nacl", "auth_service"):  # the sandbox itself must hold
        probe = [sys.executable, "-c", f"import {module}"]
        res = subprocess.run(probe, cwd=payload, env=env, capture_output=True, text=True)
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, module

    t0 = time.perf_counter()
    # Evaluations only at the stage ends and the last step: the snapshots to keep.
    cmd = ["bash", str(payload / "run.sh"), "--tiny", "--device", "cpu", "--eval-every", "100"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    log = (tmp_path / "out" / "train.log").read_text() if (tmp_path / "out").is_dir() else ""
    assert res.returncode == 0, (res.stderr + log)[-3000:]
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(out) <= 8 and {"weights.fp16.pt", "history.json", "train.log"} <= set(out)
    assert "weights-00002.fp16.pt" in out and "weights-00004.fp16.pt" in out  # stage ends
    # --init: what matched loaded (and barely moved in 6 small steps), the rest was reported.
    assert "initialised from init.fp16.pt" in log
    assert "init: generator: not in the current model: extra.weight" in log
    assert "init: critic: not in the init weights" in log
    state = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    bias = state["generator"]["to_rgb.bias"]
    assert torch.allclose(bias, torch.full_like(bias, 0.5), atol=0.05), bias
    np.testing.assert_array_equal(state["basis"]["basis"], basis.basis)
    assert state["basis"]["bands"] == basis.bands
    # --profile: one table per stage, triplets/s and the phases that make up a step.
    rates = dict(re.findall(r"profile: stage (\S+): .*?, ([\d.e+]+) triplets/s", log))
    assert set(rates) == {"warm-up", "identity", "kvfa"}, log[-2000:]
    assert all(float(r) > 0 for r in rates.values())
    identity = log.split("profile: stage identity")[1].split("profile: stage")[0]
    for phase in ("data", "rotations", "generator fwd", "system recognizer fwd", "backward"):
        assert f"| {phase} |" in identity, identity
    if _sface() is not None:
        assert "| sface fwd |" in identity and "| sface bwd |" in identity
    print(f"tiny payload run: {time.perf_counter() - t0:.1f} s")


def test_snapshots_keep_stage_ends_then_newest_then_every_nth(tmp_path) -> None:
    steps = [250, 500, 750, 1000, 1250, 1500, 2000, 2250, 4600, 12250, 12500]
    kept = snapshots_to_keep(steps, milestones={1000, 4600}, every=1000, keep=5)
    assert kept == {1000, 4600, 12500, 2000}  # 1000 counts once, as a stage end
    assert snapshots_to_keep(steps, {1000, 4600}, 500, keep=3) == {1000, 4600, 12500}
    for s in steps:
        (tmp_path / f"weights-{s:05d}.fp16.pt").write_bytes(b"x")
    (tmp_path / "weights.fp16.pt").write_bytes(b"final")
    gone = prune_snapshots(tmp_path, {1000, 4600}, 1000, 5)
    assert len(gone) == len(steps) - 4
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        "weights-01000.fp16.pt", "weights-02000.fp16.pt", "weights-04600.fp16.pt",
        "weights-12500.fp16.pt", "weights.fp16.pt",
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["qr", "householder"])
def test_batched_rotations_are_the_key_family(method) -> None:
    bands = (8, 14, 8, 21)
    gen = torch.Generator().manual_seed(0)
    q = band_rotations(bands, 400, gen, torch.device("cpu"), method).double()  # (400, 51, 51)
    eye = torch.eye(sum(bands), dtype=torch.float64)
    torch.testing.assert_close(q @ q.transpose(1, 2), eye.expand_as(q), atol=1e-5, rtol=0)
    starts = np.cumsum((0, *bands))
    block = torch.zeros_like(eye, dtype=torch.bool)
    for a, b in itertools.pairwise(starts):
        block[a:b, a:b] = True
    assert float(q[:, ~block].abs().max()) == 0.0  # block-diagonal, like key rotations
    # Haar on O(n): trace has mean 0 and variance 1 per block; numpy's draws agree.
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(np.stack([band_rotation(bands, rng) for _ in range(400)])).double()
    for a, b in itertools.pairwise(starts):
        for draws in (q, ref):
            tr = draws[:, a:b, a:b].diagonal(dim1=1, dim2=2).sum(1)
            assert abs(float(tr.mean())) < 0.2 and 0.75 < float(tr.var()) < 1.3
    again = band_rotations(
        bands, 400, torch.Generator().manual_seed(0), torch.device("cpu"), method
    )
    torch.testing.assert_close(again.double(), q)
    assert not torch.equal(q[0], q[1])


def test_householder_q_is_lapack_qr_with_a_positive_diagonal() -> None:
    a = torch.randn(30, 22, 22, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    want = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    torch.testing.assert_close(householder_q(a), want, atol=1e-10, rtol=0)
    # An identity block below a band stays the identity: padding bands to one size is exact.
    padded = torch.block_diag(a[0, :8, :8], torch.eye(14, dtype=torch.float64))[None]
    got = householder_q(padded)[0]
    torch.testing.assert_close(got[8:, 8:], torch.eye(14, dtype=torch.float64))
    torch.testing.assert_close(got[:8, :8], householder_q(a[:1, :8, :8])[0])


def test_native_sface_matches_onnxruntime_also_from_float16(tmp_path) -> None:
    from training.hpvfg2.sface_torch import SFaceNet

    path = _sface()
    if path is None:
        if os.environ.get("KFAAR_REQUIRE_DATA"):
            pytest.fail("SFace not found (set $KFAAR_SFACE_MODEL)")
        pytest.skip("SFace not found (set $KFAAR_SFACE_MODEL)")
    x = np.random.default_rng(1).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"data": x[i : i + 1]})[0] for i in range(2)])
    with torch.no_grad():
        out = SFaceNet(path).eval()(torch.from_numpy(x)).numpy()
        half = SFaceNet(pack_onnx_fp16(path, tmp_path / "s.onnx")).eval()
        out16 = half(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)
    cos = (out16 * ref).sum(1) / np.linalg.norm(out16, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999, f"float16 SFace drifted: cosine {cos.min():.5f}"


def test_phase_timer_charges_nested_time_to_the_inner_phase() -> None:
    now = [0.0]
    timer = PhaseTimer("cpu", clock=lambda: now[0])
    for k in range(3):  # the first step of a stage is left out
        with timer.step("identity", triplets=8):
            with timer.phase("generator fwd"):
                now[0] += 0.02
                with timer.phase("system recognizer fwd"):
                    now[0] += 0.03 if k else 0.3
                now[0] += 0.01
            now[0] += 0.005  # outside any phase
    sec = timer.seconds["identity"]
    assert timer.steps["identity"] == 2
    assert sec["generator fwd"] == pytest.approx(0.06)  # 2 x (0.02 + 0.01), without the inner
    assert sec["system recognizer fwd"] == pytest.approx(0.06)
    assert sec["other (untimed)"] == pytest.approx(0.01)
    assert timer.rates()["identity"] == pytest.approx(16 / 0.13)
    table = timer.table()
    assert "| system recognizer fwd | 1.0 | 30.00 | 46.2% |" in table, table
    assert "65.0 ms/step, 123 triplets/s" in table, table


def test_critic_augmentation_is_random_per_sample_and_differentiable() -> None:
    x = (torch.rand(6, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, torch.Generator().manual_seed(0))
    y.square().sum().backward()
    assert y.shape == x.shape and float(x.grad.abs().sum()) > 0
    y2 = diff_augment(x.detach(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.detach(), y2)  # reproducible from the generator
    cut = (y.detach() == 0).all(1).float().mean((1, 2))  # cutout + shift zero some pixels
    assert float(cut.min()) > 0.1 and len(set(cut.tolist())) > 1  # differently per sample
    moved = diff_augment(x.detach(), torch.Generator().manual_seed(1), policy=("translation",))
    kept = moved[moved != 0]  # whole-pixel shifts: every value is one of the input's
    assert torch.isin(kept, x.detach()).float().mean() > 0.999
