"""A multi-scale patch critic: one PatchDiscriminator per scale of the working-resolution face."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.hpvfg2.model import PatchDiscriminator


class MultiScaleCritic(nn.Module):
    """Score faces at full, half and quarter resolution: texture, parts and overall layout."""

    def __init__(self, scales: int = 3, base: int = 32) -> None:
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(base) for _ in range(scales))

    def _pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        for _ in range(len(self.scales) - 1):
            out.append(F.avg_pool2d(out[-1], 2))
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, W, W) -> one score map per scale, (N, 1, W/8/2^s, .)."""
        return [d(v) for d, v in zip(self.scales, self._pyramid(x), strict=True)]

    def with_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Scores per scale and the hidden activations of every scale, for feature matching."""
        scores, feats = [], []
        for d, v in zip(self.scales, self._pyramid(x), strict=True):
            for layer in d.net[:-1]:
                v = layer(v)
                if isinstance(layer, nn.LeakyReLU):
                    feats.append(v)
            scores.append(d.net[-1](v))
        return scores, feats


def hinge_d(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """The critic's hinge loss, averaged over scales."""
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)]
    return sum(terms) / len(terms)


def hinge_g(fake: list[torch.Tensor]) -> torch.Tensor:
    """The generator's adversarial loss, averaged over scales."""
    return sum(-f.mean() for f in fake) / len(fake)
