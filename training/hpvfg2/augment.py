"""Differentiable augmentation of the critic's inputs (DiffAugment: Zhao et al., 2020).

With a few thousand real faces a critic memorises them and its gradients stop meaning
"looks real". Applying the same random family of colour, translation and cutout changes to
real and rendered faces before the critic sees them keeps it from memorising, and because
every change is differentiable the generator still receives the critic's gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICY = ("color", "translation", "cutout")


def _uniform(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Return (N, 1, 1, 1) uniform draws on ``device``, from ``gen`` wherever it lives."""
    where = gen.device if gen is not None else device
    return torch.rand(n, 1, 1, 1, generator=gen, device=where).to(device)


def diff_augment(
    x: torch.Tensor,
    gen: torch.Generator | None = None,
    policy: tuple[str, ...] = POLICY,
    shift: float = 0.125,
    cutout: float = 0.5,
) -> torch.Tensor:
    """Randomly re-colour, translate and cut out images (N, C, H, W) in -1..1, per sample.

    ``shift`` is the largest translation as a fraction of the side (zeros fill in);
    ``cutout`` the side of the zeroed square as a fraction. Call it on real and fake
    batches alike, each with its own draw.
    """
    n, _, h, w = x.shape
    dev = x.device
    if "color" in policy:
        x = x + (_uniform(n, gen, dev) - 0.5)  # brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_uniform(n, gen, dev) * 2) + mean  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (_uniform(n, gen, dev) + 0.5) + mean  # contrast
    if "translation" in policy:
        # Whole-pixel shifts through grid_sample: bilinear at integer offsets is exact.
        dx = torch.round((_uniform(n, gen, dev).view(n) * 2 - 1) * shift * w) * 2 / w
        dy = torch.round((_uniform(n, gen, dev).view(n) * 2 - 1) * shift * h) * 2 / h
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2], theta[:, 1, 2] = dx.to(x.dtype), dy.to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if "cutout" in policy:
        ch, cw = int(h * cutout + 0.5), int(w * cutout + 0.5)
        cy = (_uniform(n, gen, dev).view(n, 1, 1) * (h + 1 - ch % 2)).long() - ch // 2
        cx = (_uniform(n, gen, dev).view(n, 1, 1) * (w + 1 - cw % 2)).long() - cw // 2
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        inside = (ys >= cy) & (ys < cy + ch) & (xs >= cx) & (xs < cx + cw)  # (N, H, W)
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x
