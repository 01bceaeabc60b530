"""HPVFG 2.0's loss terms beyond 1.0.0's: hinged identity, realism, pose and expression.

Every identity term here is a hinge: once its margin is met it gives no gradient, so it
cannot keep pushing pixels into adversarial textures after the recognizer is convinced.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from training.hpvfg.losses import cos, gaussian_kernel, separable_blur

FER_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "fer_mini_xception.pt"


def near(a: torch.Tensor, b: torch.Tensor, target: float) -> torch.Tensor:
    """Pull pairs together until their cosine reaches ``target``, then stop: mean relu(t - cos)."""
    return F.relu(target - cos(a, b)).mean()


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luminance."""
    return 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def band_energy(rgb: torch.Tensor, mask: torch.Tensor, bands: int = 3) -> torch.Tensor:
    """Log energy of the Laplacian-pyramid bands of the masked luminance, (N, bands).

    Band 0 is the finest (pores, hair, stubble): what adversarial blotches and smooth
    renders both lack. The mask (1, 1, H, W) keeps the energy to the face region.
    """
    x, m, out = luminance(rgb.float()), mask.float(), []  # float32 also under autocast: logs
    kernel = gaussian_kernel(1.0, radius=2)[:1].to(rgb.device)  # (1, 1, 1, 5)
    for _ in range(bands):
        low = separable_blur(x.expand(-1, 3, -1, -1), kernel.repeat(3, 1, 1, 1))[:, :1]
        e = ((x - low) ** 2 * m).sum((1, 2, 3)) / m.sum().clamp_min(1.0)  # (N,)
        out.append(torch.log(e + 1e-6))
        x, m = F.avg_pool2d(low, 2), F.avg_pool2d(m, 2)
    return torch.stack(out, 1)


def spectrum_loss(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Match each virtual face's band energies to its original's (same camera, same sharpness)."""
    return (band_energy(fake, mask) - band_energy(real, mask).detach()).abs().mean()


def landmark_loss(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean absolute landmark offset in pixels of the 150 chip, (N, 68, 2) in 0..1 each."""
    return (pred - ref.detach()).abs().mean() * 150.0


def fer_input(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, 150, 150) RGB -1..1 chips -> (N, 1, 64, 64) grey in -1..1, FER's scaling."""
    return F.interpolate(luminance(rgb), size=(64, 64), mode="area")


def expression_loss(fer: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """KL(p_real || p_fake) of the FER network's seven expression probabilities."""
    with torch.no_grad():
        p = fer(fer_input(real)).float().clamp_min(1e-6)
    q = fer(fer_input(fake)).float().clamp_min(1e-6)
    return (p * (p.log() - q.log())).sum(1).mean()


def load_fer() -> torch.nn.Module:
    """The FER2013 mini-XCEPTION in torch, frozen, from the weights shipped in training/assets."""
    from training.measure.fer_model import FerConfig, MiniXception

    if not FER_WEIGHTS.is_file():
        raise FileNotFoundError(f"FER weights not found at {FER_WEIGHTS}")
    net = MiniXception(FerConfig())
    net.load_state_dict(torch.load(FER_WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


def r1_penalty(critic: torch.nn.Module, real: torch.Tensor) -> torch.Tensor:
    """R1: the squared gradient norm of the critic's scores at real images, (N,) averaged."""
    real = real.detach().requires_grad_(True)
    scores = critic(real)
    total = sum(s.sum() for s in scores) if isinstance(scores, list) else scores.sum()
    (grad,) = torch.autograd.grad(total, real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def feature_matching(fake_feats: list, real_feats: list) -> torch.Tensor:
    """L1 between the mean critic features of virtual and real faces, layer by layer.

    Means over batch and position, not pairs: a virtual face is another person than its
    original, so only the statistics of the features should agree.
    """
    terms = [
        (f.mean((0, 2, 3)) - r.detach().mean((0, 2, 3))).abs().mean()
        for f, r in zip(fake_feats, real_feats, strict=True)
    ]
    return sum(terms) / len(terms)
