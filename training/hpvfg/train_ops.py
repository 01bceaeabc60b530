"""Stateless pieces of a training step: the LR schedule, batched key rotations, sampling."""

from __future__ import annotations

import numpy as np
import torch


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
