"""Projectors P(z, k): a subject key turns an identity embedding into a virtual identity.

Two designs, both conditioned on key material from keyed BLAKE2b (edge_agent.keys):

- ``BandRotation``: a keyed orthogonal map with an exact inverse. It keeps the component
  along the population mean direction and rotates the rest by random orthogonal blocks,
  one per band of principal directions with similar variance. It is an isometry, so
  distances between people survive (synchronism, differentiation), and the virtual
  embedding stays near the natural distribution that the generator can render.
- ``MLPProjector``: the paper's design, an MLP over ``[z, key bits]``, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.rotation import band_rotation

EMBED_DIM = 128
KEY_BITS = 256


@dataclass(frozen=True)
class RotationBasis:
    """The population statistics that define the bands: learned once from training faces."""

    mean_dir: np.ndarray  # (128,) unit mean direction of the embeddings
    basis: np.ndarray  # (128, 127) orthonormal complement of mean_dir, by falling variance
    bands: tuple[int, ...]  # band sizes, summing to 127

    @classmethod
    def fit(cls, z: np.ndarray, min_band: int = 8, max_ratio: float = 2.0) -> RotationBasis:
        """Fit from embeddings (N, 128): bands of at least ``min_band`` directions whose
        variances differ by at most ``max_ratio`` (the last band takes what is left)."""
        m = z.mean(0)
        m = m / np.linalg.norm(m)
        d = z - np.outer(z @ m, m)  # deviations orthogonal to the mean direction
        comp = np.eye(EMBED_DIM) - np.outer(m, m)
        var, vec = np.linalg.eigh(comp @ np.cov(d.T) @ comp)
        order = np.argsort(var)[::-1][: EMBED_DIM - 1]
        var, basis = var[order], vec[:, order]
        bands, start = [], 0
        while start < len(var):
            end = start + min_band
            while end < len(var) and var[start] <= max_ratio * var[end]:
                end += 1
            if len(var) - end < min_band:
                end = len(var)
            bands.append(end - start)
            start = end
        return cls(m.astype(np.float32), basis.astype(np.float32), tuple(bands))

    def rotation(self, key: bytes) -> np.ndarray:
        """Return the key's block-diagonal rotation (127, 127) in band coordinates."""
        from edge_agent.hpvfg import key_rotation  # PyNaCl: not needed to train

        return key_rotation(key, self.bands)

    def random_rotation(self, rng: np.random.Generator) -> np.ndarray:
        """Return a random rotation of the same family, for training."""
        return band_rotation(self.bands, rng)


class RotationProjector(nn.Module):
    """z' = m m^T z + U Q U^T z: an exact isometry whose inverse is the transpose."""

    def __init__(self, basis: RotationBasis) -> None:
        super().__init__()
        self.register_buffer("mean_dir", torch.from_numpy(basis.mean_dir))  # (128,)
        self.register_buffer("basis", torch.from_numpy(basis.basis))  # (128, 127)

    def forward(self, z: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        # z: (N, 128); rotation: (127, 127) or (N, 127, 127)
        along = (z @ self.mean_dir)[:, None] * self.mean_dir  # (N, 128)
        coords = z @ self.basis  # (N, 127)
        rotated = (rotation @ coords.unsqueeze(-1)).squeeze(-1)  # (N, 127)
        return along + rotated @ self.basis.T  # (N, 128)

    def inverse(self, z_virtual: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        return self.forward(z_virtual, rotation.transpose(-1, -2))


def key_bits(key: bytes) -> np.ndarray:
    """Return the MLP projector's conditioning: 256 derived bits as +-1 floats."""
    from edge_agent.keys import derive  # PyNaCl: not needed to train

    bits = np.unpackbits(np.frombuffer(derive(key, "kfaar-proj-mlp1"), np.uint8))
    return bits.astype(np.float32) * 2 - 1


class MLPProjector(nn.Module):
    """The paper's projector: z' = normalize(MLP([z, key bits]))."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(EMBED_DIM + KEY_BITS, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, EMBED_DIM),
        )

    def forward(self, z: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        # z: (N, 128); bits: (N, 256) of +-1
        return F.normalize(self.net(torch.cat([z, bits], dim=1)), dim=1)
