"""Rebuild the torch generator, KVFA and rotation basis from a shipped ONNX bundle.

The torch checkpoint is not shipped, but every weight is in the ONNX files: most
initializers keep their state_dict names, and the export folds the rest. The linear path
``linear.weight`` (n_identity, 128) appears transposed as an unnamed MatMul constant, the
lower bound ``-bound`` and the transposed blur kernel are folded copies of named buffers,
and ``full_mask`` (the soft face mask at full resolution) is recomputed from the config,
exactly as :class:`IdentityGenerator` builds it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from training.hpvfg.generator import GeneratorConfig, IdentityGenerator
from training.hpvfg.kvfa import KVFA, KVFAConfig
from training.hpvfg.projector import EMBED_DIM, RotationBasis

# The generator buffers and parameters stored under their own names in generator.onnx.
_NAMED = ("mask", "blur", "read", "read_bias", "bound", "write")


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def _matmul_constants(path: Path) -> dict[str, np.ndarray]:
    """Return the unnamed initializers that feed a MatMul, by name."""
    model = onnx.load(str(path))
    fed = {i for n in model.graph.node if n.op_type == "MatMul" for i in n.input}
    return {
        t.name: numpy_helper.to_array(t).copy()
        for t in model.graph.initializer
        if t.name in fed and t.name.startswith("onnx::")
    }


def load_generator(bundle: Path, cfg: GeneratorConfig) -> IdentityGenerator:
    """Rebuild the generator of ``bundle`` (its ``generator.onnx``) as a torch module."""
    path = bundle / "generator.onnx"
    init = _initializers(path)
    state = {k: init[k] for k in _NAMED}
    state |= {k: v for k, v in init.items() if k.startswith("mlp.")}
    linear = [v for v in _matmul_constants(path).values() if v.shape == (EMBED_DIM, cfg.n_identity)]
    if len(linear) != 1:
        raise ValueError(f"{path}: expected one ({EMBED_DIM}, {cfg.n_identity}) linear map")
    state["linear.weight"] = linear[0].T
    generator = IdentityGenerator(cfg)
    # full_mask is a deterministic function of the config: keep the freshly built one.
    state["full_mask"] = generator.full_mask.numpy()
    generator.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    )
    return generator.eval()


def load_basis(bundle: Path, manifest: dict) -> RotationBasis:
    """Rebuild the rotation basis from ``projector.onnx`` and the manifest's bands."""
    init = _initializers(bundle / "projector.onnx")
    bands = tuple(int(b) for b in manifest["rotation_bands"])
    return RotationBasis(init["mean_dir"], init["basis"], bands)


def load_kvfa(bundle: Path, basis: RotationBasis) -> KVFA:
    """Rebuild KVFA from ``kvfa.onnx``; its hidden width is read from the weights."""
    init = _initializers(bundle / "kvfa.onnx")
    kvfa = KVFA(basis, KVFAConfig(hidden=int(init["refine.0.weight"].shape[0])))
    state = {k: v for k, v in init.items() if k.startswith(("refine.", "projector."))}
    kvfa.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return kvfa.eval()


def load_bundle_models(bundle: Path) -> tuple[IdentityGenerator, KVFA, RotationBasis, dict]:
    """Return (generator, kvfa, basis, manifest) rebuilt from an ONNX bundle folder."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    cfg = GeneratorConfig(**manifest["generator"])
    basis = load_basis(bundle, manifest)
    return load_generator(bundle, cfg), load_kvfa(bundle, basis), basis, manifest


def checkpoint_state(
    generator: IdentityGenerator,
    kvfa: KVFA,
    basis: RotationBasis,
    *,
    step: int,
    seed: int,
    history: list[dict],
) -> dict:
    """Return a dict in ``kfaar train``'s checkpoint format, as ``export.load_models`` reads."""
    hidden = int(kvfa.refine[0].weight.shape[0])
    return {
        "step": step,
        "config": {
            "generator": dataclasses.asdict(generator.cfg),
            "kvfa": {"hidden": hidden},
            "seed": seed,
        },
        "basis": dataclasses.asdict(basis),
        "generator": {k: v.detach().clone() for k, v in generator.state_dict().items()},
        "kvfa": {k: v.detach().clone() for k, v in kvfa.state_dict().items()},
        "history": history,
    }
