"""Centralized HPVFG + KVFA training with the paper's losses: ``kfaar train``.

The settings live in ``train_config``, stateless step pieces in ``train_ops``, the loop in
``train_loop`` and checkpoints in ``checkpoint``; they are re-exported here, where every
caller has always imported them from.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training.chips import ChipSet
from training.hpvfg.checkpoint import Checkpoints
from training.hpvfg.generator import FaceSpace, IdentityGenerator
from training.hpvfg.kvfa import KVFA
from training.hpvfg.losses import apart, augment, cos, together
from training.hpvfg.projector import RotationBasis, RotationProjector
from training.hpvfg.train_config import ROTATIONS, TrainConfig
from training.hpvfg.train_loop import TrainLoop
from training.hpvfg.train_ops import (
    TripletSampler,
    band_rotations,
    cosine_lr,
    householder_q,
    load_matching,
)
from training.recognizer.export import load_port

__all__ = [
    "ROTATIONS",
    "TrainConfig",
    "Trainer",
    "TripletSampler",
    "band_rotations",
    "cosine_lr",
    "householder_q",
    "load_matching",
]

log = logging.getLogger(__name__)


class Trainer(TrainLoop, Checkpoints):
    """Train the generator, then KVFA, on chip sets; ``fit()`` runs both stages."""

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
        self.milestones: dict[int, str] = {}  # step -> "end of <stage>": snapshots kept
        # Optional extra loss added in both stages, e.g. FedProx's proximal term.
        self.penalty: Callable[[], torch.Tensor] | None = None
        self.timer = None  # a training.hpvfg2.profile.PhaseTimer while profiling
        if cfg.rotations not in ROTATIONS:
            raise ValueError(f"rotations must be one of {ROTATIONS}, not {cfg.rotations!r}")
        on_host = cfg.rotations in ("host", "numpy")
        rot_dev = torch.device("cpu") if on_host else self.dev
        self.rot_method = {"auto": None, "householder": "householder"}.get(cfg.rotations, "qr")
        self.rot_gen = torch.Generator(device=rot_dev).manual_seed(cfg.seed)
        # Chips and embeddings stay on the training device: a step gathers its rows there.
        self._sets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for s in (train, devset):  # (N, 150, 150, 3) uint8 and (N, 128) per set
            self._sets[id(s)] = (self._upload(s.chips), self._upload(s.z))
        self.fast_layout(self.generator, self.recognizer)

    def _upload(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.dev)

    def fast_layout(self, *modules: torch.nn.Module | None) -> None:
        """Put modules in channels_last when the config asks for it."""
        if self.cfg.channels_last:
            for m in modules:
                if m is not None:
                    m.to(memory_format=torch.channels_last)

    # -- helpers ------------------------------------------------------------------
    def _rows(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Index rows on the training device without waiting for queued GPU work."""
        if isinstance(idx, torch.Tensor):
            return idx.to(self.dev)
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        if self.dev.type == "cuda":
            return t.pin_memory().to(self.dev, non_blocking=True)
        return t

    def chips(self, idx: np.ndarray, s: ChipSet | None = None) -> torch.Tensor:
        s = s or self.train
        if id(s) not in self._sets:
            return torch.from_numpy(s.chips[idx]).permute(0, 3, 1, 2).float().to(self.dev)
        # (n, 3, 150, 150) BGR float; strides are NHWC, i.e. channels_last already
        return self._sets[id(s)][0][self._rows(idx)].permute(0, 3, 1, 2).float()

    def z(self, idx: np.ndarray, s: ChipSet | None = None) -> torch.Tensor:
        s = s or self.train
        if id(s) not in self._sets:
            return torch.from_numpy(s.z[idx]).to(self.dev)
        return self._sets[id(s)][1][self._rows(idx)]

    def rotations(self, n: int) -> torch.Tensor:
        """Return n random rotations of the key family (n, 127, 127): training draws."""
        if self.cfg.rotations == "numpy":
            rots = [self.basis.random_rotation(self.rng) for _ in range(n)]
            return torch.from_numpy(np.stack(rots)).to(self.dev)
        if self.rot_method is None:
            self.rot_method = self._fastest_rotations(n)
        q = band_rotations(self.basis.bands, n, self.rot_gen, self.rot_gen.device, self.rot_method)
        if q.device != self.dev:
            q = q.pin_memory().to(self.dev, non_blocking=True)
        return q

    def _fastest_rotations(self, n: int) -> str:
        """Time both batched methods once on the training device; return the faster."""
        if self.dev.type != "cuda":
            return "qr"
        gen = torch.Generator(device=self.dev).manual_seed(0)  # not the training stream
        times = {}
        for method in ("qr", "householder", "qr", "householder"):  # the second round counts
            torch.cuda.synchronize()
            t = time.perf_counter()
            band_rotations(self.basis.bands, n, gen, self.dev, method)
            torch.cuda.synchronize()
            times[method] = time.perf_counter() - t
        best = min(times, key=times.get)
        log.info(
            "rotations: %s (%s)", best, ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in times.items())
        )
        return best

    def embed(self, bgr: torch.Tensor, train: bool = False) -> torch.Tensor:
        """System embedding of BGR chips (N, 3, 150, 150); augmented while training."""
        x = augment(bgr, self.gen_aug) if train else bgr
        e = self.recognizer(x.flip(1)).float()  # BGR -> RGB; float32 also under autocast
        if not train:
            e = e + self.recognizer(x.flip(1).flip(-1)).float()  # flip average, as the edge
        return F.normalize(e, dim=1)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Return the bf16 autocast context of a training step (a no-op when off)."""
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def stage_of(self, step: int) -> str:
        """Name the stage of ``step``: warm-up, identity (or generator), kvfa."""
        c = self.cfg
        if step >= c.steps:
            return "kvfa"
        warm = getattr(c, "warmup_steps", 0)
        if not warm:
            return "generator"
        return "warm-up" if step < warm else "identity"

    def compile_models(self) -> None:
        """torch.compile the networks a step runs; state_dict names stay as they were."""
        g = self.generator
        for attr in ("render", "edit"):  # called directly, not through forward
            if hasattr(g, attr):
                setattr(g, attr, torch.compile(getattr(g, attr)))
        for name in ("recognizer", "sface", "critic"):
            module = getattr(self, name, None)
            if module is not None:
                module.compile()

    def _phase(self, name: str) -> contextlib.AbstractContextManager:
        return self.timer.phase(name) if self.timer is not None else contextlib.nullcontext()

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
        with self._phase("backward"), torch.autocast(self.dev.type, enabled=False):
            opt.zero_grad(set_to_none=True)
            total.backward()
        with self._phase("optimizer"):
            opt.step()
        # One device-to-host transfer for all losses, not one synchronizing float() each.
        values = torch.stack(
            [
                torch.as_tensor(v, device=self.dev).detach().float().reshape(())
                for v in losses.values()
            ]
        )
        return dict(zip(losses, values.tolist(), strict=True))
