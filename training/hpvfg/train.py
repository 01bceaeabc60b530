"""Centralized HPVFG + KVFA training with the paper's losses: ``kfaar train``."""

from __future__ import annotations

import contextlib
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

ROTATIONS = ("auto", "qr", "householder", "host", "numpy")


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
    lr_warmup: int = 20  # steps of linear LR warm-up at the start of each stage
    # Weights to start from (slim or full checkpoint of an earlier run): what matches the
    # current models loads, the rest is reported. A checkpoint in ``out`` takes precedence.
    init: Path | None = None
    # Throughput. Rotations: "qr" (batched torch.linalg.qr on the training device),
    # "householder" (batched reflections there), "auto" (CPU: qr; CUDA: whichever of the two
    # is faster, timed once), "host" (qr on the CPU, uploaded asynchronously), "numpy"
    # (1.0.0's loop of one numpy QR per band and rotation).
    rotations: str = "auto"
    amp: bool = False  # bf16 autocast of the steps (CUDA; on CPU only where bf16 is fast)
    channels_last: bool = False  # NHWC convolutions (tensor cores on CUDA)
    compile: bool = False  # torch.compile the generator, recognizers and critic
    profile: bool = False  # time every phase of every step; print the table at the end
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    kvfa: KVFAConfig = field(default_factory=KVFAConfig)


def cosine_lr(base: float, step: int, total: int, warmup: int = 20, clock: float = 0.0) -> float:
    """Return the learning rate: linear warm-up, then cosine decay to 5% of ``base``.

    ``clock`` (0..1) is the share of the stage's time budget spent; the decay follows it
    where it is ahead of the steps, so a stage cut short by the budget still ends low.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, max((step - warmup) / max(1, total - warmup), clock))
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t)))


def householder_q(a: torch.Tensor) -> torch.Tensor:
    """Return Q of the QR decomposition of square matrices (M, n, n) with R's diagonal > 0.

    Plain batched tensor operations (n - 1 Householder reflections), so the cost on a GPU is
    a fixed few hundred small kernels rather than one solver call per matrix.
    """
    m, n, _ = a.shape
    q = torch.eye(n, dtype=a.dtype, device=a.device).repeat(m, 1, 1)
    r = a.clone()
    for k in range(n - 1):
        x = r[:, k:, k]  # (M, n - k)
        v = x.clone()
        v[:, 0] += torch.where(x[:, 0] >= 0, 1.0, -1.0) * x.norm(dim=1)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
        r[:, k:, :] -= 2 * v[:, :, None] * (v[:, None, :] @ r[:, k:, :])
        q[:, :, k:] -= 2 * (q[:, :, k:] @ v[:, :, None]) * v[:, None, :]
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]


def band_rotations(
    bands: tuple[int, ...],
    n: int,
    gen: torch.Generator,
    device: torch.device,
    method: str = "qr",
) -> torch.Tensor:
    """Return n Haar-random block-diagonal rotations (n, S, S), S = sum(bands), on ``device``.

    The same family as :func:`edge_agent.rotation.band_rotation` (one Haar-random orthogonal
    block per band: QR of a Gaussian matrix, columns signed by R's diagonal), drawn batched.
    ``method`` "qr": one ``torch.linalg.qr`` per distinct band size; "householder": every
    band at once, padded to the largest with an identity block (which QR leaves alone), by
    :func:`householder_q`. Both give the same matrices for the same Gaussian draws.
    """
    size, top = sum(bands), max(bands)
    out = torch.zeros(n, size, size, device=device)
    starts = [int(s) for s in np.cumsum((0, *bands))[:-1]]
    if method == "householder":
        sides = torch.tensor(bands, device=device)
        idx = torch.arange(top, device=device)
        inside = (idx[None, :, None] < sides[:, None, None]) & (
            idx[None, None] < sides[:, None, None]
        )
        pad = torch.diag_embed((idx[None] >= sides[:, None]).float())  # (k, top, top)
        g = torch.randn(n, len(bands), top, top, generator=gen, device=device)
        q = householder_q((g * inside + pad).view(-1, top, top)).view(n, len(bands), top, top)
        for j, (s, b) in enumerate(zip(starts, bands, strict=True)):
            out[:, s : s + b, s : s + b] = q[:, j, :b, :b]
        return out
    for b in sorted(set(bands)):
        where = [s for s, w in zip(starts, bands, strict=True) if w == b]
        g = torch.randn(n * len(where), b, b, generator=gen, device=device)
        q, r = torch.linalg.qr(g)  # (n * k, b, b) each
        q = (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).view(n, -1, b, b)
        for j, s in enumerate(where):
            out[:, s : s + b, s : s + b] = q[:, j]
    return out


def load_matching(module: torch.nn.Module, state: dict, what: str) -> list[str]:
    """Load the entries of ``state`` whose names and shapes match; return what did not."""
    own = module.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    odd = [f"{what}.{k}: shape {tuple(v.shape)} != {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and k not in fits]  # fmt: skip
    res = module.load_state_dict(fits, strict=False)
    odd += [f"{what}.{k}: not in the init weights" for k in res.missing_keys if k not in state]
    odd += [f"{what}.{k}: not in the current model" for k in state if k not in own]
    return odd


class TripletSampler:
    """Draw (x1, x2, y): two photos of one person with at least two, and another person."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator) -> None:
        self.labels, self.rng = labels, rng
        self.order = np.argsort(labels, kind="stable")  # rows grouped by identity
        self.counts = np.bincount(labels)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.multi = np.flatnonzero(self.counts >= 2)

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = self.rng.choice(self.multi, size=n)
        count, start = self.counts[ids], self.starts[ids]
        # Two different photos of each person, drawn for the whole batch at once.
        j1 = (self.rng.random(n) * count).astype(np.int64)
        j2 = (self.rng.random(n) * (count - 1)).astype(np.int64)
        j2 += j2 >= j1
        x1, x2 = self.order[start + j1], self.order[start + j2]
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

    # -- loop ---------------------------------------------------------------------
    def fit(self) -> Path:
        c = self.cfg
        c.out.mkdir(parents=True, exist_ok=True)
        ckpt = c.out / "checkpoint.pt"
        g_opt = torch.optim.Adam(self.generator.parameters(), lr=c.lr)
        k_opt = torch.optim.Adam(self.kvfa.parameters(), lr=c.kvfa_lr)
        start = self._resume(ckpt, g_opt, k_opt)
        if start == 0 and c.init is not None:
            self.init_from(c.init)
        if c.profile and self.timer is None:
            from training.hpvfg2.profile import PhaseTimer, instrument

            instrument(self, PhaseTimer(self.dev))
        total = c.steps + c.kvfa_steps
        bar = progress(range(start, total), desc="train", initial=start, total=total)
        t0 = time.perf_counter()
        skipping, kvfa_t0 = False, None
        for step in bar:
            elapsed = time.perf_counter() - t0
            if c.time_budget_s is not None and elapsed > c.time_budget_s:
                log.info("time budget of %.0f s spent at step %d: saving", c.time_budget_s, step)
                self._save(ckpt, step, g_opt, k_opt)
                break
            if self._skip_to_kvfa(step, elapsed):
                if not skipping and step > start:  # the generator stage ends early here
                    self._milestone(step, f"end of {self.stage_of(step - 1)} (budget)")
                    self._evaluate(step, "generator", {}, t0)
                    self._save(ckpt, step, g_opt, k_opt)
                skipping = True
                continue
            stage = self.stage_of(step)
            gen_stage = step < c.steps
            stage_step, stage_len = (step, c.steps) if gen_stage else (step - c.steps, c.kvfa_steps)
            if kvfa_t0 is None and not gen_stage:
                kvfa_t0 = elapsed
            clock = self._budget_spent(elapsed, kvfa_t0)
            for group in (g_opt if gen_stage else k_opt).param_groups:
                base_lr = c.lr if gen_stage else c.kvfa_lr
                group["lr"] = cosine_lr(base_lr, stage_step, stage_len, c.lr_warmup, clock)
            with self._timed_step(stage), self.autocast():
                losses = self.generator_step(g_opt) if gen_stage else self.kvfa_step(k_opt)
            if step % 25 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[:3]})
            last = step + 1 == total
            ends = not last and self.stage_of(step + 1) != stage
            if ends:
                self._milestone(step + 1, f"end of {stage}")
            if (step + 1) % c.eval_every == 0 or last or ends:
                self._evaluate(step + 1, "generator" if gen_stage else "kvfa", losses, t0)
                self._save(ckpt, step + 1, g_opt, k_opt)
        (c.out / "history.json").write_text(json.dumps(self.history, indent=1))
        if self.timer is not None:
            log.info("time per phase%s", self.timer.table())
        return ckpt

    def _budget_spent(self, elapsed: float, kvfa_t0: float | None) -> float:
        """Return the share (0..1) of the current stage's time budget already spent."""
        c = self.cfg
        if c.time_budget_s is None:
            return 0.0
        if kvfa_t0 is None:
            return elapsed / (c.generator_share * c.time_budget_s)
        return (elapsed - kvfa_t0) / max(c.time_budget_s - kvfa_t0, 1e-6)

    def _timed_step(self, stage: str) -> contextlib.AbstractContextManager:
        if self.timer is None:
            return contextlib.nullcontext()
        return self.timer.step(stage, self.cfg.batch * (2 if stage == "kvfa" else 1))

    def _milestone(self, step: int, label: str) -> None:
        """Mark ``step`` as the end of a stage: its snapshot survives pruning."""
        self.milestones[step] = label
        log.info("milestone at step %d: %s", step, label)

    def _evaluate(self, step: int, stage: str, losses: dict, t0: float) -> None:
        row = {"step": step, "stage": stage}
        row |= {"loss_" + k: round(v, 5) for k, v in losses.items()}
        row |= {k: round(v, 4) for k, v in self.dev_metrics().items()}
        if step in self.milestones:
            row["milestone"] = self.milestones[step]
        row["elapsed_s"] = round(time.perf_counter() - t0, 1)
        self.history.append(row)
        log.info("%s", row)

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
                "rot_rng": self.rot_gen.get_state(),
                "history": self.history,
                "milestones": self.milestones,
            },
            tmp,
        )
        tmp.replace(path)

    def _resume(self, path: Path, g_opt, k_opt) -> int:
        if not path.is_file():
            return 0
        state = torch.load(path, map_location=self.dev, weights_only=False)
        self._set_basis(state["basis"])
        self.generator.load_state_dict(state["generator"])
        self.kvfa.load_state_dict(state["kvfa"])
        g_opt.load_state_dict(state["g_opt"])
        k_opt.load_state_dict(state["k_opt"])
        self.rng.bit_generator.state = state["rng"]
        if "rot_rng" in state:
            self.rot_gen.set_state(state["rot_rng"].cpu())
        self.history = state["history"]
        self.milestones = {int(k): v for k, v in state.get("milestones", {}).items()}
        log.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    def _set_basis(self, b: dict) -> None:
        """Adopt a saved rotation basis: the generator and KVFA were trained in it."""
        self.basis = RotationBasis(
            np.asarray(b["mean_dir"], np.float32), np.asarray(b["basis"], np.float32),
            tuple(int(n) for n in b["bands"]),
        )  # fmt: skip
        self.projector = RotationProjector(self.basis).to(self.dev)

    def init_from(self, path: Path) -> list[str]:
        """Start from an earlier run's weights (slim or checkpoint); return what did not load.

        Entries whose names and shapes match load; the rest (a new input channel, a new
        head) keep their fresh initialisation and are logged. Optimizers, steps and history
        start afresh, and so does the learning-rate warm-up.
        """
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "basis" in state:
            self._set_basis(state["basis"])
        odd: list[str] = []
        for name in ("generator", "kvfa", "critic"):
            module = getattr(self, name, None)
            if module is None:
                continue
            if name not in state:
                odd.append(f"{name}: not in the init weights")
                continue
            odd += load_matching(module, state[name], name)
        log.info("initialised from %s (step %s)", path, state.get("step"))
        groups: dict[str, list[str]] = {}
        for line in odd:  # "module.entry: reason" -> one line per module and reason
            head, reason = line.split(": ", 1)
            module, _, entry = head.partition(".")
            groups.setdefault(f"{module}: {reason}", []).append(entry or module)
        for what, names in groups.items():
            more = f" and {len(names) - 6} more" if len(names) > 6 else ""
            log.warning("init: %s: %s%s", what, ", ".join(names[:6]), more)
        return odd
