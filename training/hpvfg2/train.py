"""HPVFG 2.0 training: a re-rendering generator against two recognizers, plus a realism critic.

The loop, the projector, the KVFA stage, checkpoints and resume come from 1.0.0's
:class:`training.hpvfg.train.Trainer`; this module changes the generator stage:

- a warm-up that teaches the decoder to render faces at all (reconstruction of the face
  region from context, structure and the face's own identity, against a patch critic);
- then the paper's identity losses on *two* recognizers: the system recognizer (dlib's
  ResNet, whose space z' lives in) and OpenCV's SFace, with the augmentation that keeps
  them honest. FaceNet and dlib's own pipeline judge the result; neither is in any loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_agent.assets import asset_path
from edge_agent.face.align import ARCFACE_112, DLIB_150, similarity_transform
from training.chips import ChipSet
from training.hpvfg.kvfa import KVFA
from training.hpvfg.losses import apart, augment, together
from training.hpvfg.projector import RotationBasis
from training.hpvfg.train import TrainConfig, Trainer
from training.hpvfg2.model import (
    PatchDiscriminator,
    RenderConfig,
    RenderGenerator,
    resize_area,
    structure_map,
)
from training.hpvfg2.slim import keep_newest, write_slim
from training.recognizer.onnx_graph import OnnxGraph, dlib_port_from_onnx

log = logging.getLogger(__name__)

SFACE_ENV = "KFAAR_SFACE_MODEL"
SYSTEM_RECOGNIZER = "models/dlib_resnet_v1-port1.onnx"


@dataclass
class RenderTrainConfig(TrainConfig):
    sface: Path | None = None  # SFace ONNX; None trains against the system recognizer alone
    warmup_steps: int = 300  # generator steps of reconstruction + realism only
    lr: float = 2e-4
    d_lr: float = 2e-4
    sface_margin: float = 0.25  # SFace's same-person cosine is about 0.36 and above
    w_adversarial: float = 0.05
    w_structure: float = 1.0  # pose and expression: the low-pass layout must survive
    w_identity_recon: float = 1.0  # R(G(x, z)) == z: the decoder renders the identity it is given
    w_reconstruction: float = 4.0
    # Also write slim weights at every evaluation here (the newest few): a GPU run brings
    # them back, and a recognizer in no loss (FaceNet, dlib's own) picks the one to ship.
    snapshots: Path | None = None
    keep_snapshots: int = 4
    generator: RenderConfig = field(default_factory=RenderConfig)


def arcface_grid(device: torch.device) -> torch.Tensor:
    """Sampling grid (1, 112, 112, 2) that warps a dlib 150 chip into ArcFace 112 geometry."""
    to_dlib = similarity_transform(ARCFACE_112.points, DLIB_150.points)
    ys, xs = np.mgrid[0:112, 0:112].astype(np.float64)
    src = np.stack([xs, ys, np.ones_like(xs)], -1) @ to_dlib.T  # (112, 112, 2) dlib px
    grid = torch.tensor((src + 0.5) / 150 * 2 - 1, dtype=torch.float32, device=device)
    return grid[None]


class RenderTrainer(Trainer):
    """1.0.0's trainer with the re-rendering generator, two recognizers and a critic."""

    @classmethod
    def create(
        cls, cfg: RenderTrainConfig, train: ChipSet | None = None, devset: ChipSet | None = None
    ) -> RenderTrainer:
        """Fit the rotation basis on the training set and build fresh models.

        The chip sets are read from the config's paths unless the caller already holds them.
        """
        torch.manual_seed(cfg.seed)
        train = train if train is not None else ChipSet.load(cfg.train_chips)
        devset = devset if devset is not None else ChipSet.load(cfg.dev_chips)
        basis = RotationBasis.fit(train.z)
        recognizer = dlib_port_from_onnx(asset_path(SYSTEM_RECOGNIZER))
        self = cls.around(
            cfg, train, devset, RenderGenerator(cfg.generator), KVFA(basis, cfg.kvfa), basis,
            recognizer,
        )  # fmt: skip
        self.sface = None
        if cfg.sface is not None:
            self.sface = OnnxGraph(cfg.sface).to(self.dev).eval().requires_grad_(False)
        self.critic = PatchDiscriminator().to(self.dev)
        self.d_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.d_lr, betas=(0.5, 0.99))
        self.g_steps = 0
        self.arc_grid = arcface_grid(self.dev)
        return self

    # -- embeddings -----------------------------------------------------------------
    def sface_embed(self, bgr: torch.Tensor, train: bool) -> torch.Tensor:
        """SFace embedding of BGR dlib chips (N, 3, 150, 150) 0..255, augmented while training."""
        x = augment(bgr, self.gen_aug) if train else bgr
        grid = self.arc_grid.expand(len(x), -1, -1, -1)  # (N, 112, 112, 2)
        rgb = F.grid_sample(
            x.flip(1), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return F.normalize(self.sface(rgb), dim=1)

    @staticmethod
    def to_bgr(rgb: torch.Tensor) -> torch.Tensor:
        return ((rgb + 1.0) * 127.5).clamp(0, 255).flip(1)

    # -- generator stage ------------------------------------------------------------
    def generator_step(self, opt: torch.optim.Optimizer) -> dict:
        c, b, g = self.cfg, self.cfg.batch, self.generator
        self.g_steps += 1
        warm = self.g_steps <= c.warmup_steps
        i1, i2, iy = self.sample(b)
        idx = i1 if warm else np.concatenate([i1, i2, iy, i1])
        x, z = self.chips(idx), self.z(idx)  # (kB, 3, 150, 150) BGR, (kB, 128)
        rgb = x.flip(1) / 127.5 - 1.0
        small = resize_area(rgb, g.cfg.work)  # (kB, 3, W, W)
        m = g.mask
        # Reconstruction: the face region of x1, rendered from its own identity z(x1).
        rec = g.render(rgb[:b], z[:b])  # (B, 3, W, W)
        losses = {
            "reconstruction": ((rec - small[:b]).abs() * m).mean() / m.mean(),
            "structure": self._structure_loss(rec, small[:b]),
        }
        fakes = [rec]
        if not warm:
            q1, q2 = self.rotations(b), self.rotations(b)
            zv = self.projector(z, torch.cat([q1, q1, q1, q2]))  # virtual identities
            faces = g.render(rgb, zv)  # (4B, 3, W, W)
            fakes.append(faces)
            full = self.to_bgr(g.composite(torch.cat([rgb, rgb[:b]]), torch.cat([faces, rec])))
            e = self.embed(full, train=True)  # (5B, 128) system recognizer
            e11, e21, ey, e12, e_rec = e.split(b)
            ev = e[: 4 * b]
            losses |= {
                "structure": losses["structure"] + self._structure_loss(faces, small),
                "identity_recon": together(e_rec, z[:b]),
                "target": together(ev, zv),
                "anonymity": apart(ev[: 3 * b], z[: 3 * b], c.margin),
                "synchronism": together(e11, e21),
                "diversity": apart(e11, e12, c.margin),
                "differentiation": apart(e11, ey, c.margin),
            }
            if self.sface is not None:
                with torch.no_grad():
                    s_orig = self.sface_embed(x[: 3 * b], train=False)
                s = self.sface_embed(full[: 4 * b], train=True)
                s11, s21, sy, s12 = s.split(b)
                m_s = c.sface_margin
                losses["anonymity"] = losses["anonymity"] + apart(s[: 3 * b], s_orig, m_s)
                losses["synchronism"] = losses["synchronism"] + together(s11, s21)
                losses["diversity"] = losses["diversity"] + apart(s11, s12, m_s)
                losses["differentiation"] = losses["differentiation"] + apart(s11, sy, m_s)
        fake = torch.cat(fakes)
        composite = m * fake + (1 - m) * torch.cat([small[:b], small][: len(fakes)])
        losses["adversarial"] = -self.critic(composite).mean()
        total = sum(c_w * losses[k] for k, c_w in self._weights().items() if k in losses)
        out = self._step(opt, total, losses)
        out["critic"] = self._critic_step(small, composite.detach())
        return out

    def _structure_loss(self, face: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """L1 between the low-pass luminance layouts of the face regions: pose, expression."""
        m, cells = self.generator.mask, self.generator.cfg.structure
        return (structure_map(face * m, cells) - structure_map(original * m, cells)).abs().mean()

    def _weights(self) -> dict[str, float]:
        c = self.cfg
        names = ("reconstruction", "structure", "identity_recon", "target", "anonymity")
        names += ("synchronism", "diversity", "differentiation", "adversarial")
        return {k: getattr(c, f"w_{k}") for k in names}

    def _critic_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One hinge-loss step of the patch critic: real faces high, rendered ones low."""
        loss = F.relu(1 - self.critic(real)).mean() + F.relu(1 + self.critic(fake)).mean()
        self.d_opt.zero_grad()
        loss.backward()
        self.d_opt.step()
        return float(loss.detach())

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, path: Path, step: int, g_opt, k_opt) -> None:
        super()._save(path, step, g_opt, k_opt)
        extra = {"critic": self.critic.state_dict(), "d_opt": self.d_opt.state_dict()}
        torch.save(extra | {"g_steps": self.g_steps}, path.with_name("critic.pt"))
        snaps = self.cfg.snapshots
        if snaps is not None:
            snaps.mkdir(parents=True, exist_ok=True)
            write_slim(path, snaps / f"weights-{step:05d}.fp16.pt")
            keep_newest(snaps, "weights-*.fp16.pt", self.cfg.keep_snapshots)

    def _resume(self, path: Path, g_opt, k_opt) -> int:
        step = super()._resume(path, g_opt, k_opt)
        critic = path.with_name("critic.pt")
        if step and critic.is_file():
            state = torch.load(critic, map_location=self.dev, weights_only=False)
            self.critic.load_state_dict(state["critic"])
            self.d_opt.load_state_dict(state["d_opt"])
            self.g_steps = int(state["g_steps"])
        return step
