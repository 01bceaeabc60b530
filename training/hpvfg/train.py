"""Centralized HPVFG + KVFA training with the paper's losses: ``kfaar train``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_agent.progress import progress
from training.chips import ChipSet
from training.hpvfg.generator import FaceSpace, GeneratorConfig, IdentityGenerator
from training.hpvfg.kvfa import KVFA, KVFAConfig
from training.hpvfg.losses import apart, augment, cos, together
from training.hpvfg.projector import RotationBasis, RotationProjector
from training.recognizer.export import load_port

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    train_chips: Path
    dev_chips: Path
    out: Path
    steps: int = 1000
    kvfa_steps: int = 1000
    batch: int = 12  # triplets per step; the recognizer sees 4 virtual faces per triplet
    lr: float = 1e-2
    margin: float = 0.7  # "apart" pushes cosines below this (same person is >= 0.93)
    kvfa_lr: float = 2e-3
    # KVFA outputs must stay in the recognizer's space, where two random people already
    # score about 0.8: push impostors only below that, not into unnatural directions.
    kvfa_margin: float = 0.85
    w_target: float = 1.0  # R(G(x, z')) toward z': the virtual identity is z'
    w_anonymity: float = 1.0
    w_synchronism: float = 1.0
    w_diversity: float = 1.0
    w_differentiation: float = 1.0
    w_reconstruction: float = 1.0  # G(x, z, z) == x
    w_edit: float = 0.002  # prior: small edits in within-person std units
    seed: int = 2025
    device: str = "cpu"
    eval_every: int = 200
    dev_faces: int = 240
    # Wall-clock budget (None: none). The generator stage gets `generator_share` of it, then
    # the KVFA stage starts early; past the budget the run saves and stops, resumable.
    time_budget_s: float | None = None
    generator_share: float = 0.85
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    kvfa: KVFAConfig = field(default_factory=KVFAConfig)


def cosine_lr(base: float, step: int, total: int, warmup: int = 20) -> float:
    """Return the learning rate: linear warm-up, then cosine decay to 5% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t)))


class TripletSampler:
    """Draw (x1, x2, y): two photos of one person with at least two, and another person."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator) -> None:
        self.labels, self.rng = labels, rng
        self.by_id = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        self.multi = [c for c, idx in self.by_id.items() if len(idx) >= 2]

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = self.rng.choice(self.multi, size=n)
        x1, x2 = zip(*(self.rng.choice(self.by_id[c], 2, replace=False) for c in ids), strict=True)
        y = self.rng.integers(0, len(self.labels), size=n)
        while (clash := self.labels[y] == ids).any():  # redraw y where it hit the same person
            y[clash] = self.rng.integers(0, len(self.labels), size=int(clash.sum()))
        return np.array(x1), np.array(x2), y


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        torch.manual_seed(cfg.seed)  # before anything that draws: the port, PCA, layer init
        recognizer = load_port()
        train = ChipSet.load(cfg.train_chips)
        basis = RotationBasis.fit(train.z)
        space = FaceSpace.fit(train.chips, train.labels, train.z, cfg.generator)
        generator = IdentityGenerator(cfg.generator, space)
        kvfa = KVFA(basis, cfg.kvfa)
        self._attach(cfg, train, ChipSet.load(cfg.dev_chips), generator, kvfa, basis, recognizer)

    @classmethod
    def around(
        cls,
        cfg: TrainConfig,
        train: ChipSet,
        devset: ChipSet,
        generator: IdentityGenerator,
        kvfa: KVFA,
        basis: RotationBasis,
        recognizer: torch.nn.Module | None = None,
    ) -> Trainer:
        """Wrap existing models and chip sets, e.g. a federated site fine-tuning its data."""
        torch.manual_seed(cfg.seed)
        self = cls.__new__(cls)
        recognizer = recognizer if recognizer is not None else load_port()
        self._attach(cfg, train, devset, generator, kvfa, basis, recognizer)
        return self

    def _attach(self, cfg, train, devset, generator, kvfa, basis, recognizer) -> None:
        self.cfg = cfg
        self.dev = torch.device(cfg.device)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen_aug = torch.Generator().manual_seed(cfg.seed)
        self.train, self.devset = train, devset
        self.recognizer = recognizer.to(self.dev).eval().requires_grad_(False)
        self.basis = basis
        self.projector = RotationProjector(self.basis).to(self.dev)
        self.generator = generator.to(self.dev)
        self.kvfa = kvfa.to(self.dev)
        self.sample = TripletSampler(self.train.labels, self.rng)
        self.history: list[dict] = []
        # Optional extra loss added in both stages, e.g. FedProx's proximal term.
        self.penalty: Callable[[], torch.Tensor] | None = None

    # -- helpers ------------------------------------------------------------------
    def chips(self, idx: np.ndarray, s: ChipSet | None = None) -> torch.Tensor:
        s = s or self.train
        return torch.from_numpy(s.chips[idx]).permute(0, 3, 1, 2).float().to(self.dev)

    def z(self, idx: np.ndarray, s: ChipSet | None = None) -> torch.Tensor:
        return torch.from_numpy((s or self.train).z[idx]).to(self.dev)

    def rotations(self, n: int) -> torch.Tensor:
        rots = [self.basis.random_rotation(self.rng) for _ in range(n)]
        return torch.from_numpy(np.stack(rots)).to(self.dev)  # (n, 127, 127)

    def embed(self, bgr: torch.Tensor, train: bool = False) -> torch.Tensor:
        """System embedding of BGR chips (N, 3, 150, 150); augmented while training."""
        x = augment(bgr, self.gen_aug) if train else bgr
        e = self.recognizer(x.flip(1))  # BGR -> RGB
        if not train:
            e = e + self.recognizer(x.flip(1).flip(-1))  # flip average, as the edge does
        return F.normalize(e, dim=1)

    # -- generator stage ----------------------------------------------------------
    def generator_step(self, opt: torch.optim.Optimizer) -> dict:
        c, b = self.cfg, self.cfg.batch
        i1, i2, iy = self.sample(b)
        x = self.chips(np.concatenate([i1, i2, iy, i1]))  # (4B, 3, 150, 150)
        z = self.z(np.concatenate([i1, i2, iy, i1]))
        q1, q2 = self.rotations(b), self.rotations(b)
        zv = self.projector(z, torch.cat([q1, q1, q1, q2]))  # virtual identities
        edit = self.generator.edit(x, z, zv)
        e = self.embed(self.generator.render(x, edit), train=True)
        e11, e21, ey, e12 = e.split(b)
        recon = self.generator.edit(x[:b], z[:b], z[:b])
        losses = {
            "target": together(e, zv),
            "anonymity": apart(e[: 3 * b], z[: 3 * b], c.margin),
            "synchronism": together(e11, e21),
            "diversity": apart(e11, e12, c.margin),
            "differentiation": apart(e11, ey, c.margin),
            "reconstruction": recon.pow(2).mean(),
            "edit": edit.pow(2).mean(),
        }
        return self._step(opt, sum(getattr(c, f"w_{k}") * v for k, v in losses.items()), losses)

    @torch.no_grad()
    def dev_metrics(self) -> dict:
        """Quick dev numbers on chips with the system recognizer (the harness is the judge)."""
        s, n = self.devset, min(self.cfg.dev_faces, len(self.devset))
        idx = np.arange(n)
        x, z = self.chips(idx, s), self.z(idx, s)
        rng = np.random.default_rng(0)
        q1 = torch.from_numpy(self.basis.random_rotation(rng)).to(self.dev)
        q2 = torch.from_numpy(self.basis.random_rotation(rng)).to(self.dev)
        zv1, zv2 = self.projector(z, q1), self.projector(z, q2)
        v1, v2 = self.generator(x, z, zv1), self.generator(x, z, zv2)
        e1, e2 = self.embed(v1), self.embed(v2)
        thr = 0.9302
        out = {
            "anonymity": float((cos(e1, z) < thr).float().mean()),
            "diversity": float((cos(e1, e2) < thr).float().mean()),
            "target_cos": float(cos(e1, zv1).mean()),
            "pixel_change": float((v1 - x).abs().mean()),
        }
        same = s.labels[idx][:, None] == s.labels[idx][None]
        np.fill_diagonal(same, False)
        if same.any():
            sim = (e1 @ e1.T).cpu().numpy()
            out["synchronism_same_cos"] = float(sim[same].mean())
        rec = self.kvfa(e1, q1)
        out["kvfa_cos"] = float(cos(rec, z).mean())
        out["kvfa_wrong_cos"] = float(cos(self.kvfa(e1, q2), z).mean())
        return out

    # -- KVFA stage ---------------------------------------------------------------
    def kvfa_step(self, opt: torch.optim.Optimizer) -> dict:
        c, b = self.cfg, self.cfg.batch * 2
        i1, i2, iy = self.sample(b)
        idx = np.concatenate([i1, i2, iy])
        x, z = self.chips(idx), self.z(idx)
        q1, qw = self.rotations(b), self.rotations(b)
        with torch.no_grad():
            zv = self.projector(z, torch.cat([q1, q1, q1]))
            e = self.embed(self.generator(x, z, zv), train=True)
        e11, e21, ey = e.split(b)
        z1, z2, _ = z.split(b)
        r11, r21, ry = self.kvfa(e11, q1), self.kvfa(e21, q1), self.kvfa(ey, q1)
        losses = {
            # preventing false rejection
            "recover": together(r11, z1) + together(r21, z2),
            "recover_cross": together(r11, r21),
            # preventing misidentification
            "keyless": apart(e11, z1, c.kvfa_margin),
            "wrong_key": apart(self.kvfa(e11, qw), z1, c.kvfa_margin),
            "other_person": apart(r11, ry, c.kvfa_margin),
        }
        return self._step(opt, sum(losses.values()), losses)

    def _step(self, opt: torch.optim.Optimizer, total: torch.Tensor, losses: dict) -> dict:
        """Add the optional penalty, take one optimizer step; return the losses as floats."""
        if self.penalty is not None:
            total = total + self.penalty()
        opt.zero_grad()
        total.backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    # -- loop ---------------------------------------------------------------------
    def fit(self) -> Path:
        c = self.cfg
        c.out.mkdir(parents=True, exist_ok=True)
        ckpt = c.out / "checkpoint.pt"
        g_opt = torch.optim.Adam(self.generator.parameters(), lr=c.lr)
        k_opt = torch.optim.Adam(self.kvfa.parameters(), lr=c.kvfa_lr)
        start = self._resume(ckpt, g_opt, k_opt)
        total = c.steps + c.kvfa_steps
        bar = progress(range(start, total), desc="train", initial=start, total=total)
        t0 = time.perf_counter()
        for step in bar:
            elapsed = time.perf_counter() - t0
            if c.time_budget_s is not None and elapsed > c.time_budget_s:
                log.info("time budget of %.0f s spent at step %d: saving", c.time_budget_s, step)
                self._save(ckpt, step, g_opt, k_opt)
                break
            if self._skip_to_kvfa(step, elapsed):
                continue
            gen_stage = step < c.steps
            stage_step, stage_len = (step, c.steps) if gen_stage else (step - c.steps, c.kvfa_steps)
            for group in (g_opt if gen_stage else k_opt).param_groups:
                group["lr"] = cosine_lr(c.lr if gen_stage else c.kvfa_lr, stage_step, stage_len)
            losses = self.generator_step(g_opt) if gen_stage else self.kvfa_step(k_opt)
            bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[:3]})
            last = step + 1 == total
            if (step + 1) % c.eval_every == 0 or last or step + 1 == c.steps:
                row = {"step": step + 1, "stage": "generator" if gen_stage else "kvfa"}
                row |= {"loss_" + k: round(v, 5) for k, v in losses.items()}
                row |= {k: round(v, 4) for k, v in self.dev_metrics().items()}
                row["elapsed_s"] = round(time.perf_counter() - t0, 1)
                self.history.append(row)
                log.info("%s", row)
                self._save(ckpt, step + 1, g_opt, k_opt)
        (c.out / "history.json").write_text(json.dumps(self.history, indent=1))
        return ckpt

    def _skip_to_kvfa(self, step: int, elapsed: float) -> bool:
        """Skip the rest of the generator stage once it has used its share of the budget."""
        c = self.cfg
        if c.time_budget_s is None or step >= c.steps:
            return False
        return elapsed > c.generator_share * c.time_budget_s

    def _save(self, path: Path, step: int, g_opt, k_opt) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "step": step,
                "config": dataclasses.asdict(self.cfg),
                "basis": dataclasses.asdict(self.basis),
                "generator": self.generator.state_dict(),
                "kvfa": self.kvfa.state_dict(),
                "g_opt": g_opt.state_dict(),
                "k_opt": k_opt.state_dict(),
                "rng": self.rng.bit_generator.state,
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(path)

    def _resume(self, path: Path, g_opt, k_opt) -> int:
        if not path.is_file():
            return 0
        state = torch.load(path, map_location=self.dev, weights_only=False)
        self.generator.load_state_dict(state["generator"])
        self.kvfa.load_state_dict(state["kvfa"])
        g_opt.load_state_dict(state["g_opt"])
        k_opt.load_state_dict(state["k_opt"])
        self.rng.bit_generator.state = state["rng"]
        self.history = state["history"]
        log.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])
