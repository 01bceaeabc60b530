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
from training.hpvfg.losses import apart, augment
from training.hpvfg.projector import RotationBasis
from training.hpvfg.train import TrainConfig, Trainer
from training.hpvfg2.augment import diff_augment
from training.hpvfg2.critic import MultiScaleCritic, hinge_d, hinge_g
from training.hpvfg2.landmarks import load_landmark_net
from training.hpvfg2.losses import (
    expression_loss,
    feature_matching,
    landmark_loss,
    load_fer,
    near,
    r1_penalty,
    spectrum_loss,
)
from training.hpvfg2.model import (
    RenderConfig,
    RenderGenerator,
    resize_area,
    structure_map,
)
from training.hpvfg2.sface_torch import SFaceNet
from training.hpvfg2.slim import prune_snapshots, write_slim
from training.recognizer.onnx_graph import OnnxGraph, dlib_port_from_onnx

log = logging.getLogger(__name__)

SFACE_ENV = "KFAAR_SFACE_MODEL"
SYSTEM_RECOGNIZER = "models/dlib_resnet_v1-port1.onnx"


@dataclass
class RenderTrainConfig(TrainConfig):
    sface: Path | None = None  # SFace ONNX; None trains against the system recognizer alone
    warmup_steps: int = 1500  # generator steps of reconstruction + realism only
    lr: float = 2e-4
    d_lr: float = 2e-4
    sface_margin: float = 0.25  # SFace's same-person cosine is about 0.36 and above
    w_adversarial: float = 0.5
    w_structure: float = 1.0  # pose and expression: the low-pass layout must survive
    w_identity_recon: float = 1.0  # R(G(x, z)) == z: the decoder renders the identity it is given
    w_reconstruction: float = 4.0
    # Round 2 (docs/HPVFG2.md): every identity pull is a hinge that stops at its cosine, so
    # a convinced recognizer no longer drives adversarial textures; realism dominates.
    target_cos: float = 0.95  # fidelity: R(G(x, k)) near z', then left alone
    sync_cos: float = 0.95  # two photos, one key: tighter than real same-person pairs
    recon_cos: float = 0.95  # R(G(x, z)) near z
    sface_sync_cos: float = 0.7  # SFace's same-person cosines run lower
    critic_scales: int = 3  # patch critics at full, 1/2 and 1/4 resolution
    r1_gamma: float = 1.0  # R1 penalty on real faces, applied lazily
    r1_every: int = 4
    # DiffAugment on everything the critic sees: the data set is small (thousands of chips).
    critic_augment: bool = True
    w_feature_match: float = 1.0  # mean critic features of virtual vs real faces
    w_spectrum: float = 1.0  # Laplacian band energies of the face vs its original's
    w_landmarks: float = 0.1  # 68 landmarks of the virtual vs the original face, per pixel
    w_expression: float = 1.0  # KL of the FER network's expression probabilities
    # Also write slim weights at every evaluation here: a GPU run brings them back, and a
    # recognizer in no loss (FaceNet, dlib's own) picks the one to ship. At most
    # ``keep_snapshots`` stay: the end of each stage first, then the newest, then every
    # ``snapshot_every``-th step (slim.prune_snapshots).
    snapshots: Path | None = None
    keep_snapshots: int = 5
    snapshot_every: int = 2000
    system_recognizer: Path | None = None  # its ONNX, float32 or 16; None: the packaged one
    sface_impl: str = "torch"  # "torch": sface_torch.SFaceNet; "graph": the ONNX interpreter
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
        recognizer = dlib_port_from_onnx(cfg.system_recognizer or asset_path(SYSTEM_RECOGNIZER))
        self = cls.around(
            cfg, train, devset, RenderGenerator(cfg.generator), KVFA(basis, cfg.kvfa), basis,
            recognizer,
        )  # fmt: skip
        self.sface = None
        if cfg.sface is not None:
            net = SFaceNet(cfg.sface) if cfg.sface_impl == "torch" else OnnxGraph(cfg.sface)
            self.sface = net.to(self.dev).eval().requires_grad_(False)
        self._build_realism()
        self.g_steps = 0
        self.arc_grid = arcface_grid(self.dev)
        self.fast_layout(self.sface, self.critic)
        if cfg.compile:
            self.compile_models()
        return self

    # -- embeddings -----------------------------------------------------------------
    def sface_embed(self, bgr: torch.Tensor, train: bool) -> torch.Tensor:
        """SFace embedding of BGR dlib chips (N, 3, 150, 150) 0..255, augmented while training."""
        x = augment(bgr, self.gen_aug) if train else bgr
        grid = self.arc_grid.expand(len(x), -1, -1, -1)  # (N, 112, 112, 2)
        rgb = F.grid_sample(
            x.flip(1), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return F.normalize(self.sface(rgb).float(), dim=1)  # float32 also under autocast

    @staticmethod
    def to_bgr(rgb: torch.Tensor) -> torch.Tensor:
        return ((rgb + 1.0) * 127.5).clamp(0, 255).flip(1)

    # -- generator stage ------------------------------------------------------------
    def _build_realism(self) -> None:
        """The multi-scale critic, its optimizer, the landmark regressor and the FER network."""
        c, g = self.cfg, self.generator
        self.critic = MultiScaleCritic(c.critic_scales).to(self.dev)
        self.d_opt = torch.optim.Adam(self.critic.parameters(), lr=c.d_lr, betas=(0.5, 0.99))
        self.d_steps = 0
        self.marks = g.marks if g.cfg.landmarks else None
        if self.marks is None and c.w_landmarks:
            self.marks = load_landmark_net().to(self.dev)
        self.fer = load_fer().to(self.dev) if c.w_expression else None
        self.core = (g.mask > 0.99).float()  # (1, 1, W, W): the face without the feathered rim

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
        losses = {"reconstruction": ((rec - small[:b]).abs() * m).mean() / m.mean()}
        fakes = [rec]
        if not warm:
            q1, q2 = self.rotations(b), self.rotations(b)
            zv = self.projector(z, torch.cat([q1, q1, q1, q2]))  # virtual identities
            faces = g.render(rgb, zv)  # (4B, 3, W, W)
            fakes.append(faces)
            full = self.to_bgr(g.composite(torch.cat([rgb, rgb[:b]]), torch.cat([faces, rec])))
            losses |= self._identity_losses(x, z, zv, full)
        fake = torch.cat(fakes)  # (B or 5B, 3, W, W), originals below in the same order
        orig_small = torch.cat([small[:b], small][: len(fakes)])
        orig_rgb = torch.cat([rgb[:b], rgb][: len(fakes)])
        composite = m * fake + (1 - m) * orig_small
        losses |= self._realism_losses(fake, orig_small, orig_rgb, composite, small)
        total = sum(c_w * losses[k] for k, c_w in self._weights().items() if k in losses)
        out = self._step(opt, total, losses)
        out.update(self._critic_step(small, composite.detach()))
        return out

    def _identity_losses(self, x, z, zv, full) -> dict[str, torch.Tensor]:
        """The paper's terms on both recognizers; every pull is hinged at its cosine."""
        c, b = self.cfg, self.cfg.batch
        e = self.embed(full, train=True)  # (5B, 128) system recognizer
        e11, e21, ey, e12, e_rec = e.split(b)
        ev = e[: 4 * b]
        losses = {
            "identity_recon": near(e_rec, z[:b], c.recon_cos),
            "target": near(ev, zv, c.target_cos),
            "anonymity": apart(ev[: 3 * b], z[: 3 * b], c.margin),
            "synchronism": near(e11, e21, c.sync_cos),
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
            losses["synchronism"] = losses["synchronism"] + near(s11, s21, c.sface_sync_cos)
            losses["diversity"] = losses["diversity"] + apart(s11, s12, m_s)
            losses["differentiation"] = losses["differentiation"] + apart(s11, sy, m_s)
        return losses

    def _realism_losses(self, fake, orig_small, orig_rgb, composite, real) -> dict:
        """Critic, feature matching, spectrum, structure, landmarks and expression terms."""
        c, g = self.cfg, self.generator
        scores, feats = self.critic.with_features(self._critic_view(composite))
        losses = {
            "adversarial": hinge_g(scores),
            "structure": self._structure_loss(fake, orig_small),
            "spectrum": spectrum_loss(fake, orig_small, self.core),
        }
        if c.w_feature_match:
            with torch.no_grad():
                _, real_feats = self.critic.with_features(self._critic_view(real))
            losses["feature_match"] = feature_matching(feats, real_feats)
        if c.w_landmarks or c.w_expression:
            full = g.composite(orig_rgb, fake)  # (N, 3, 150, 150) RGB -1..1
            if c.w_landmarks:
                with torch.no_grad():
                    ref = self.marks(orig_rgb)
                losses["landmarks"] = landmark_loss(self.marks(full), ref)
            if self.fer is not None:
                losses["expression"] = expression_loss(self.fer, full, orig_rgb)
        return losses

    def _structure_loss(self, face: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """L1 between the low-pass luminance layouts of the face regions: pose, expression."""
        m, cells = self.generator.mask, self.generator.cfg.structure
        return (structure_map(face * m, cells) - structure_map(original * m, cells)).abs().mean()

    def _weights(self) -> dict[str, float]:
        c = self.cfg
        names = ("reconstruction", "structure", "identity_recon", "target", "anonymity")
        names += ("synchronism", "diversity", "differentiation", "adversarial")
        names += ("feature_match", "spectrum", "landmarks", "expression")
        return {k: getattr(c, f"w_{k}") for k in names}

    def _critic_view(self, x: torch.Tensor) -> torch.Tensor:
        """Return what the critic sees of a batch: augmented alike for real and virtual."""
        return diff_augment(x) if self.cfg.critic_augment else x

    def _critic_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One hinge step of the multi-scale critic, with a lazy R1 penalty on real faces."""
        c = self.cfg
        self.d_steps += 1
        loss = hinge_d(self.critic(self._critic_view(real)), self.critic(self._critic_view(fake)))
        out = {"critic": float(loss.detach())}
        if c.r1_gamma and self.d_steps % c.r1_every == 0:
            r1 = r1_penalty(self.critic, real)
            loss = loss + 0.5 * c.r1_gamma * c.r1_every * r1  # lazy: scaled by its interval
            out["r1"] = float(r1.detach())
        self.d_opt.zero_grad()
        loss.backward()
        self.d_opt.step()
        return out

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, path: Path, step: int, g_opt, k_opt) -> None:
        super()._save(path, step, g_opt, k_opt)
        extra = {"critic": self.critic.state_dict(), "d_opt": self.d_opt.state_dict()}
        torch.save(extra | {"g_steps": self.g_steps}, path.with_name("critic.pt"))
        snaps, c = self.cfg.snapshots, self.cfg
        if snaps is not None:
            snaps.mkdir(parents=True, exist_ok=True)
            write_slim(path, snaps / f"weights-{step:05d}.fp16.pt")
            prune_snapshots(snaps, set(self.milestones), c.snapshot_every, c.keep_snapshots)

    def _resume(self, path: Path, g_opt, k_opt) -> int:
        step = super()._resume(path, g_opt, k_opt)
        critic = path.with_name("critic.pt")
        if step and critic.is_file():
            state = torch.load(critic, map_location=self.dev, weights_only=False)
            self.critic.load_state_dict(state["critic"])
            self.d_opt.load_state_dict(state["d_opt"])
            self.g_steps = int(state["g_steps"])
        return step
