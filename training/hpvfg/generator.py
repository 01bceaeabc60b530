"""Generator G(x, z, z'): re-render an aligned face with identity z', keeping everything else.

The edit lives in a low-dimensional face space learned from real faces, which is what
makes the network small enough for an edge CPU and hard to turn into an adversarial
perturbation: at a working resolution of 75 px, the chip is projected on a PCA basis of
aligned faces, and the basis is rotated by a Fisher analysis so that its first
``n_identity`` directions carry identity (between-person variance) rather than pose,
expression or light (within-person variance). An MLP reads the face's coordinates and the
source and target identities and moves only those identity coordinates; the edit is
mapped back to pixels, upsampled and added to the full-resolution chip, so pose,
expression, lighting and background outside the identity directions pass through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.face.align import soft_mask
from training.hpvfg.losses import gaussian_kernel, separable_blur

CHIP = 150  # DLIB_150 chips, BGR, values 0..255


@dataclass
class GeneratorConfig:
    work: int = 75  # working resolution of the edit (CHIP / 2)
    n_pca: int = 300  # face-space dimensions
    n_identity: int = 96  # identity directions the generator may move
    hidden: int = 512
    linear_gain: float = 4.0  # start beyond the regression: its prediction regresses to the mean
    bound: float = 3.0  # new identity coordinates stay within this many population stds
    feather: float = 0.25  # the edit fades out over this fraction of the chip at the mask rim
    detail: float = 0.4  # share of the original's fine detail (above ~2 px) kept on the face


@dataclass
class FaceSpace:
    """PCA + Fisher statistics of aligned faces (the generator's fixed buffers)."""

    mean: np.ndarray  # (D,) mean working-resolution face, D = 3 * work * work
    basis: np.ndarray  # (D, n_pca) orthonormal PCA basis
    to_identity: np.ndarray  # (n_pca, n_identity): coords -> identity coords
    from_identity: np.ndarray  # (n_identity, n_pca): identity-coord edit -> coord edit
    fisher_ratio: np.ndarray  # (n_identity,) between / within variance of each direction
    from_embedding: np.ndarray  # (128, n_identity): ridge map from z to identity coords

    @classmethod
    def empty(cls, cfg: GeneratorConfig) -> FaceSpace:
        """Return zero statistics of the right shapes, to load a saved state_dict into."""
        d, n = 3 * cfg.work**2, cfg.n_identity
        shapes = (d,), (d, 1), (1, n), (n, 1), (n,), (128, n)
        return cls(*(np.zeros(s, np.float32) for s in shapes))

    @classmethod
    def fit(
        cls, chips: np.ndarray, labels: np.ndarray, z: np.ndarray, cfg: GeneratorConfig
    ) -> FaceSpace:
        """Fit from uint8 BGR chips (N, 150, 150, 3), identity labels and embeddings (N, 128)."""
        mask = working_mask(cfg.work, cfg.feather)
        xs = []
        for i in range(0, len(chips), 512):
            x = torch.from_numpy(chips[i : i + 512]).permute(0, 3, 1, 2).float()
            xs.append(downsample(x, cfg.work, mask).flatten(1))
        x = torch.cat(xs)  # (N, D)
        mean = x.mean(0)
        q = min(cfg.n_pca + 20, *x.shape)
        _, _, v = torch.pca_lowrank(x - mean, q=q, center=False, niter=4)
        basis = v[:, : cfg.n_pca]
        c = ((x - mean) @ basis).double().numpy()  # (N, n_pca)
        counts = np.bincount(labels)
        means = np.zeros((counts.size, cfg.n_pca))
        np.add.at(means, labels, c)
        means /= np.maximum(counts, 1)[:, None]
        multi = counts[labels] >= 2
        within = c[multi] - means[labels[multi]]
        s_w = within.T @ within / len(within) + 1e-6 * np.eye(cfg.n_pca)
        s_t = np.cov(c.T)
        ev, ue = np.linalg.eigh(s_w)
        whiten = ue / np.sqrt(ev)
        ratio, e = np.linalg.eigh(whiten.T @ s_t @ whiten)
        order = np.argsort(ratio)[::-1][: cfg.n_identity]
        to_id = whiten @ e[:, order]  # to_id^T s_w to_id = I
        a = c @ to_id  # (N, n_identity) identity coordinates
        zc = z - z.mean(0)
        ridge = np.linalg.solve(zc.T @ zc + 1e-2 * np.eye(zc.shape[1]), zc.T @ (a - a.mean(0)))
        return cls(
            mean.numpy(),
            basis.numpy(),
            to_id.astype(np.float32),
            (s_w @ to_id).T.astype(np.float32),  # the inverse map on these directions
            ratio[order].astype(np.float32),
            ridge.astype(np.float32),
        )


def working_mask(work: int, feather: float) -> torch.Tensor:
    """Return the soft face mask at working resolution, (1, 1, work, work)."""
    m = torch.from_numpy(soft_mask(CHIP, inset=0.1, feather=feather)).float()[None, None]
    return F.interpolate(m, size=(work, work), mode="area")


def downsample(chip: torch.Tensor, work: int, mask: torch.Tensor) -> torch.Tensor:
    """(N, 3, 150, 150) in 0..255 -> masked (N, 3, work, work) in 0..1."""
    return F.interpolate(chip / 255.0, size=(work, work), mode="area") * mask


class IdentityGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, space: FaceSpace | None = None) -> None:
        """Build from a fitted face space, or empty, to load a saved state_dict into."""
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mask", working_mask(cfg.work, cfg.feather))
        full = torch.from_numpy(soft_mask(CHIP, inset=0.1, feather=cfg.feather)).float()
        self.register_buffer("full_mask", full[None, None])  # (1, 1, 150, 150)
        self.register_buffer("blur", gaussian_kernel(2.0, radius=4))  # (3, 1, 1, 9)
        space = space or FaceSpace.empty(cfg)
        read = space.basis @ space.to_identity  # (D, n_identity)
        self.register_buffer("read", torch.from_numpy(read))
        self.register_buffer("read_bias", torch.from_numpy(-space.mean @ read))  # (n_identity,)
        # Natural range of each identity coordinate (total std = sqrt of the Fisher ratio,
        # since within-person std is 1): virtual faces stay inside it, which rules out the
        # blotchy extremes that fool a recognizer without looking like anybody.
        bound = cfg.bound * np.sqrt(np.maximum(space.fisher_ratio, 1.0))
        self.register_buffer("bound", torch.from_numpy(bound.astype(np.float32)))
        write = space.from_identity @ space.basis.T  # (n_identity, D)
        self.register_buffer("write", torch.from_numpy(write.astype(np.float32)))
        n = cfg.n_identity
        # The linear path starts as the regression "identity coordinates of z' minus those
        # of z": a smooth, identity-driven edit; the MLP learns what it misses.
        self.linear = nn.Linear(128, n, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(cfg.linear_gain * torch.from_numpy(space.from_embedding.T))
        self.mlp = nn.Sequential(
            nn.Linear(n + 2 * 128, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, n),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # start as the identity map: G(x, .) = x
        nn.init.zeros_(self.mlp[-1].bias)

    def identity_coords(self, chip: torch.Tensor) -> torch.Tensor:
        small = downsample(chip, self.cfg.work, self.mask).flatten(1)  # (N, D)
        return small @ self.read + self.read_bias  # (N, n_identity)

    def edit(self, chip: torch.Tensor, z: torch.Tensor, z_virtual: torch.Tensor) -> torch.Tensor:
        """Return the identity-coordinate edit (N, n_identity), in within-person std units."""
        a = self.identity_coords(chip)
        raw = self.linear(z_virtual - z) + self.mlp(torch.cat([a, z, z_virtual], dim=1))
        target = torch.maximum(torch.minimum(a + raw, self.bound), -self.bound)
        return target - a

    def render(self, chip: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
        w = self.cfg.work
        delta = (edit @ self.write).view(-1, 3, w, w)  # (N, 3, w, w), zero off the mask
        # Keep the original's mean colour on the face: the scene's light and white balance
        # belong to the photo, not to the identity, and shifting them looks unnatural.
        dc = delta.sum(dim=(2, 3), keepdim=True) / self.mask.sum()
        delta = (delta - dc * self.mask) * self.mask
        up = F.interpolate(delta, size=(CHIP, CHIP), mode="bilinear", align_corners=False)
        if self.cfg.detail < 1.0:
            # Fine detail (skin texture, wrinkles, eyelid lines) is the original's identity
            # that the 75 px face space cannot edit: fade it on the face.
            smooth = separable_blur(chip, self.blur)
            chip = chip - (1.0 - self.cfg.detail) * self.full_mask * (chip - smooth)
        return (chip + 255.0 * up).clamp(0.0, 255.0)  # (N, 3, 150, 150)

    def forward(self, chip: torch.Tensor, z: torch.Tensor, z_virtual: torch.Tensor) -> torch.Tensor:
        # chip: (N, 3, 150, 150) BGR 0..255; z, z_virtual: (N, 128) unit vectors
        return self.render(chip, self.edit(chip, z, z_virtual))
