"""The paper's cosine-embedding losses, and the image augmentation that keeps them honest."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (N, D) tensors -> (N,)."""
    return F.cosine_similarity(a, b, dim=1)


def together(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pull pairs together: mean of 1 - cos."""
    return (1.0 - cos(a, b)).mean()


def apart(a: torch.Tensor, b: torch.Tensor, margin: float) -> torch.Tensor:
    """Push pairs apart until their cosine falls below ``margin``."""
    return F.relu(cos(a, b) - margin).mean()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Randomly flip, re-light, blur and rescale BGR chips (N, 3, H, W) in 0..255.

    The recognizer sees the virtual face only through these changes, so the generator
    cannot win with a brittle pixel pattern that one camera blur or rescale would undo:
    an identity change has to survive them, as a real one does.
    """
    n, _, h, w = x.shape
    dev = x.device

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device="cpu").to(dev)

    flip = u(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 0.8 + 0.4 * u(n, 1, 1, 1)
    bias = 20.0 * (u(n, 1, 1, 1) - 0.5)
    x = (x * gain + bias).clamp(0, 255)
    scale = float(0.55 + 0.45 * u(1))
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    sigma = float(1.2 * u(1))
    if sigma > 0.3:
        x = separable_blur(x, gaussian_kernel(sigma, radius=3).to(dev))
    return x


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """Return a 1-D Gaussian as a depthwise kernel for 3 channels, (3, 1, 1, 2r+1)."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)


def separable_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur (N, 3, H, W) rows then columns with a kernel from :func:`gaussian_kernel`."""
    r = kernel.shape[-1] // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kernel, groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), kernel.transpose(2, 3), groups=3)
