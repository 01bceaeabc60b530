"""The federated task: which weights travel, a site's data, local fine-tuning, dev metrics.

Only the trainable weights are federated: the generator's linear path and MLP and KVFA's
refine MLP (about 0.64 M floats, 2.5 MB). The recognizer is frozen, and the projector, the
face-space read/write maps, masks and bounds are fixed buffers that every site rebuilds
from the same shipped bundle; the server sends the bundle's digest with each round so a
site with a different base model refuses to train instead of averaging unlike weights.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.chips import ChipSet, build_chip_set, list_images
from training.hpvfg.from_bundle import load_bundle_models
from training.hpvfg.generator import IdentityGenerator
from training.hpvfg.kvfa import KVFA
from training.hpvfg.projector import RotationBasis
from training.hpvfg.train import TrainConfig, Trainer

log = logging.getLogger(__name__)

# Chips are cached in the site folder, named by a digest of its image listing.


@dataclass
class LocalConfig:
    """One round of local work at a site (the run config's client keys)."""

    steps: int = 20  # generator steps
    kvfa_steps: int = 20
    batch: int = 8  # triplets per step
    lr: float = 1e-3  # fine-tuning: a tenth of the centralized peak
    kvfa_lr: float = 5e-4
    proximal_mu: float = 0.0  # FedProx: mu / 2 * ||w - w_global||^2
    seed: int = 2025


def default_bundle() -> Path:
    """Return the packaged (shipped) HPVFG bundle folder."""
    from edge_agent.assets import asset_path
    from edge_agent.hpvfg import DEFAULT_BUNDLE

    return Path(asset_path(DEFAULT_BUNDLE))


def bundle_digest(bundle: Path) -> str:
    """Return the digest that names a base model: SHA-256 of its manifest file."""
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


@dataclass
class Models:
    generator: IdentityGenerator
    kvfa: KVFA
    basis: RotationBasis
    manifest: dict


def load_models(bundle: Path | str | None = None) -> Models:
    """Rebuild the shipped (or given) bundle's models in torch."""
    return Models(*load_bundle_models(Path(bundle) if bundle else default_bundle()))


def trainable_state(models: Models) -> OrderedDict[str, torch.Tensor]:
    """Return the federated weights, named ``generator.*`` and ``kvfa.*``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for prefix, module in (("generator", models.generator), ("kvfa", models.kvfa)):
        for name, p in module.named_parameters():
            out[f"{prefix}.{name}"] = p.detach().cpu().clone()
    return out


def load_trainable(models: Models, state: dict[str, torch.Tensor | np.ndarray]) -> None:
    """Copy federated weights into the models; the names and shapes must match exactly."""
    expected = trainable_state(models)
    if list(state) != list(expected):
        raise ValueError(f"federated weights {sorted(state)} != model's {sorted(expected)}")
    params = dict(models.generator.named_parameters(prefix="generator"))
    params |= dict(models.kvfa.named_parameters(prefix="kvfa"))
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(torch.as_tensor(np.asarray(value)))


def site_chips(data_path: Path, prebuilt: ChipSet | None = None) -> ChipSet:
    """Return a site's aligned chips, built once (or given) and cached in its folder."""
    rels = list_images(data_path)
    if not rels:
        raise FileNotFoundError(f"no <identity>/<image> files under {data_path}")
    digest = hashlib.sha256("\n".join(rels).encode()).hexdigest()[:16]
    cache = data_path / f"chips-{digest}.npz"  # not an <identity>/<image> path: never listed
    if prebuilt is None and cache.is_file():
        return ChipSet.load(cache)
    chips = prebuilt if prebuilt is not None else build_chip_set(data_path, rels)
    chips.save(cache)
    return chips


def _proximal(models: Models, mu: float):
    anchors = [p.detach().clone() for p in _params(models)]

    def penalty() -> torch.Tensor:
        sq = sum((p - a).pow(2).sum() for p, a in zip(_params(models), anchors, strict=True))
        return 0.5 * mu * sq

    return penalty


def _params(models: Models) -> list[torch.nn.Parameter]:
    return [*models.generator.parameters(), *models.kvfa.parameters()]


def fit_local(models: Models, chips: ChipSet, cfg: LocalConfig) -> dict[str, float]:
    """Fine-tune generator then KVFA on local chips with the paper's losses; return losses."""
    tc = TrainConfig(
        Path(), Path(), Path(), batch=cfg.batch, lr=cfg.lr, kvfa_lr=cfg.kvfa_lr, seed=cfg.seed
    )
    trainer = Trainer.around(tc, chips, chips, models.generator, models.kvfa, models.basis)
    if cfg.proximal_mu > 0:
        trainer.penalty = _proximal(models, cfg.proximal_mu)
    models.generator.train()
    models.kvfa.train()
    out: dict[str, float] = {}
    stages = (
        (cfg.steps, models.generator, cfg.lr, trainer.generator_step),
        (cfg.kvfa_steps, models.kvfa, cfg.kvfa_lr, trainer.kvfa_step),
    )
    for steps, module, lr, step in stages:
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        for _ in range(steps):
            losses = step(opt)
        if steps:
            out |= {f"loss-{k}": v for k, v in losses.items()}
    models.generator.eval()
    models.kvfa.eval()
    return out


def dev_score(metrics: dict[str, float]) -> float:
    """Return the scalar that picks the best round: higher anonymity, diversity, KVFA margin."""
    kvfa = metrics.get("kvfa_cos", 0.0) - metrics.get("kvfa_wrong_cos", 0.0)
    return metrics.get("anonymity", 0.0) + metrics.get("diversity", 0.0) + kvfa


def dev_metrics(
    models: Models, dev: ChipSet, faces: int, recognizer: torch.nn.Module | None = None
) -> dict[str, float]:
    """Return the trainer's quick dev metrics on ``faces`` dev chips, plus the score."""
    tc = TrainConfig(Path(), Path(), Path(), dev_faces=faces)
    g, k, b = models.generator, models.kvfa, models.basis
    trainer = Trainer.around(tc, dev, dev, g, k, b, recognizer=recognizer)
    out = trainer.dev_metrics()
    out["score"] = dev_score(out)
    return out
