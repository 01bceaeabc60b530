"""``kfaar export``: turn a training checkpoint into a versioned ONNX bundle, fp32 and int8."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from training.chips import ChipSet
from training.evaluation.metrics import threshold_at_far
from training.hpvfg.generator import GeneratorConfig, IdentityGenerator
from training.hpvfg.kvfa import KVFA, KVFAConfig
from training.hpvfg.projector import RotationBasis, RotationProjector
from training.onnx_export import export_onnx

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


def build_generator(config: dict) -> nn.Module:
    """Return an untrained generator of the architecture a checkpoint's config names."""
    if config.get("arch") == "render":
        from training.hpvfg2.model import RenderConfig, RenderGenerator

        return RenderGenerator(RenderConfig(**config))
    return IdentityGenerator(GeneratorConfig(**config))


def load_models(checkpoint: Path) -> tuple[nn.Module, KVFA, RotationBasis, dict]:
    """Rebuild the trained generator, KVFA and rotation basis from a checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = state["config"]
    b = state["basis"]
    basis = RotationBasis(np.asarray(b["mean_dir"]), np.asarray(b["basis"]), tuple(b["bands"]))
    generator = build_generator(cfg["generator"])
    generator.load_state_dict(state["generator"])
    kvfa = KVFA(basis, KVFAConfig(**cfg["kvfa"]))
    kvfa.load_state_dict(state["kvfa"])
    return generator.eval(), kvfa.eval(), basis, state


class _Calibration(CalibrationDataReader):
    """Feed real aligned faces with their own and key-projected identities."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _generator_feeds(
    chips: ChipSet, basis: RotationBasis, projector: nn.Module, n: int, seed: int
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(chips), size=min(n, len(chips)), replace=False)
    feeds = []
    for i in idx:
        z = torch.from_numpy(chips.z[i : i + 1])
        zv = projector(z, torch.from_numpy(basis.random_rotation(rng)))
        chip = chips.chips[i].transpose(2, 0, 1)[None].astype(np.float32)
        feeds.append({"chip": chip, "z": z.numpy(), "z_virtual": zv.detach().numpy()})
    return feeds


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_bundle(
    checkpoint: Path, out: Path, calibration: ChipSet, version: str, calib_faces: int = 128
) -> dict:
    """Write projector, generator (fp32 + int8) and KVFA ONNX files and a manifest to ``out``."""
    generator, kvfa, basis, state = load_models(checkpoint)
    projector = RotationProjector(basis).eval()
    out.mkdir(parents=True, exist_ok=True)
    z, rot = torch.zeros(1, 128), torch.eye(127)
    chip = torch.zeros(1, 3, 150, 150)
    export_onnx(
        projector, {"z": z, "rotation": rot}, ["z_virtual"], out / "projector.onnx", ("rotation",)
    )
    export_onnx(
        generator, {"chip": chip, "z": z, "z_virtual": z}, ["virtual"], out / "generator.onnx"
    )
    export_onnx(
        kvfa, {"virtual": z, "rotation": rot}, ["recovered"], out / "kvfa.onnx", ("rotation",)
    )

    feeds = _generator_feeds(calibration, basis, projector, calib_faces, seed=7)
    declared = {i.name for i in onnx.load(str(out / "generator.onnx")).graph.input}
    feeds = [{k: v for k, v in f.items() if k in declared} for f in feeds]
    pre = out / "generator.pre.onnx"
    # onnxruntime's symbolic shape inference fails on the 2.0 renderer's graph, and on
    # failure it leaves temporary model files in the working folder: skip it there.
    skip = not isinstance(generator, IdentityGenerator)
    quant_pre_process(str(out / "generator.onnx"), str(pre), skip_symbolic_shape=skip)
    quantize_static(
        str(pre),
        str(out / "generator.int8.onnx"),
        _Calibration(feeds),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        # 7-bit weights: x86 CPUs without VNNI run U8S8 with VPMADDUBSW, whose int16 sums
        # saturate on full-range weights (onnxruntime's quantization docs); measured the
        # same error with and without it on a VNNI machine (docs/measurements/int8_parity.md).
        reduce_range=True,
    )
    pre.unlink()
    parity = generator_parity(generator, out, feeds[:16])
    threshold = calibrate_kvfa(generator, kvfa, basis, calibration)
    virtual_threshold = calibrate_virtual(generator, basis, calibration)
    files = sorted(p.name for p in out.glob("*.onnx"))
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": version,
        "embedding_model": "dlib_resnet_v1-port1",
        "projector": "band-rotation",
        "rotation_bands": list(basis.bands),
        "kvfa_threshold": threshold,
        "virtual_threshold": virtual_threshold,
        "generator": state["config"]["generator"],
        "training": {
            "steps": state["step"],
            "seed": state["config"]["seed"],
            "history_tail": state["history"][-2:],
        },
        "parity": parity,
        "files": {name: _sha256(out / name) for name in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    log.info("wrote bundle %s (%s)", out, version)
    return manifest


@torch.no_grad()
def generator_parity(generator: nn.Module, out: Path, feeds: list[dict]) -> dict:
    """Return the max |torch - onnx| in pixels for fp32, and the mean for int8."""
    res = {}
    for name in ("generator.onnx", "generator.int8.onnx"):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        diffs = []
        for f in feeds:
            z = f.get("z", f["z_virtual"])  # a generator that ignores z may not declare it
            ref = generator(
                torch.from_numpy(f["chip"]), torch.from_numpy(z), torch.from_numpy(f["z_virtual"])
            ).numpy()
            diffs.append(np.abs(sess.run(None, f)[0] - ref))
        d = np.concatenate([x.ravel() for x in diffs])
        res[name] = {"max_abs_px": float(d.max()), "mean_abs_px": float(d.mean())}
    return res


@torch.no_grad()
def _virtual_embeddings(generator, basis, chips, idx, rot, recognizer) -> np.ndarray:
    """R(G(x, k)) for the chips ``idx`` under one key rotation, flip-averaged like the edge."""
    projector, out = RotationProjector(basis), []
    for i in range(0, len(idx), 32):
        j = idx[i : i + 32]
        chip = torch.from_numpy(chips.chips[j]).permute(0, 3, 1, 2).float()
        z = torch.from_numpy(chips.z[j])
        virtual = generator(chip, z, projector(z, rot)).round().flip(1)  # uint8 levels, RGB
        e = recognizer(virtual) + recognizer(virtual.flip(-1))
        out.append(torch.nn.functional.normalize(e).numpy())
    return np.concatenate(out)


@torch.no_grad()
def calibrate_virtual(
    generator: nn.Module,
    basis: RotationBasis,
    chips: ChipSet,
    n: int = 600,
    keys: int = 3,
    far: float = 1e-3,
    seed: int = 13,
) -> float:
    """Return the VIRTUAL space's threshold: FAR ``far`` for different people under one key.

    That is the impostor of a Verify: someone presenting their face with the claimed
    subject's key. Calibrated on training faces.
    """
    from training.recognizer.export import load_port

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(chips), size=min(n, len(chips)), replace=False)
    labels, recognizer, impostor = chips.labels[idx], load_port().eval(), []
    other = labels[:, None] != labels[None, :]
    for _ in range(keys):
        rot = torch.from_numpy(basis.random_rotation(rng))
        e = _virtual_embeddings(generator, basis, chips, idx, rot, recognizer)
        impostor.append((e @ e.T)[np.triu(other, 1)])
    return round(float(threshold_at_far(np.concatenate(impostor), far)), 4)


@torch.no_grad()
def calibrate_kvfa(
    generator: nn.Module,
    kvfa: nn.Module,
    basis: RotationBasis,
    chips: ChipSet,
    n: int = 600,
    wrong_keys: int = 5,
    far: float = 1e-3,
    seed: int = 11,
) -> float:
    """Return KVFA's threshold: the cosine to S(x) that keeps two false accepts below ``far``.

    Impostors are I(G(x,k),k) against other people's S(x), and I(G(x,k),k') against the
    same person's S(x) for wrong keys k'. Calibrated on training faces, never on the dev
    identities that measure it.
    """
    from training.recognizer.export import load_port

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(chips), size=min(n, len(chips)), replace=False)
    recognizer, right, wrong = load_port().eval(), [], []
    for i in idx:
        rot = torch.from_numpy(basis.random_rotation(rng))
        e = torch.from_numpy(_virtual_embeddings(generator, basis, chips, [i], rot, recognizer))
        right.append(kvfa(e, rot))
        for _ in range(wrong_keys):
            wrong_rot = torch.from_numpy(basis.random_rotation(rng))
            wrong.append(float(kvfa(e, wrong_rot)[0] @ torch.from_numpy(chips.z[i])))
    r, z = torch.cat(right).numpy(), chips.z[idx]
    labels = chips.labels[idx]
    other = (r @ z.T)[labels[:, None] != labels[None, :]]
    thr = max(threshold_at_far(other, far), threshold_at_far(np.array(wrong), far))
    return round(float(thr), 4)
