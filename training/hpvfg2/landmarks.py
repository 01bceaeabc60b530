"""A tiny differentiable 68-landmark regressor for DLIB_150 chips, and landmark heatmaps.

It is taught by dlib's shape predictor (``training.hpvfg2.landmarks_fit``) and serves the
renderer twice: its heatmaps condition the generator (inside the exported graph, so the
edge computes them from the chip without torch), and its landmarks on the virtual face
are pulled toward those of the original (pose and expression consistency).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHIP = 150
INPUT = 64  # the regressor's input side: the chip area-resampled to 64 x 64
WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "landmarks68.pt"
# dlib's 68-point layout, in contiguous runs: one heatmap channel per facial part.
GROUPS = ((0, 17), (17, 27), (27, 36), (36, 48), (48, 68))  # jaw, brows, nose, eyes, mouth


def _area(n_in: int, n_out: int) -> torch.Tensor:
    """Return the (n_out, n_in) area-resampling matrix (exports to ONNX at any ratio)."""
    edges = torch.linspace(0, n_in, n_out + 1, dtype=torch.float64)
    pos = torch.arange(n_in, dtype=torch.float64)
    lo = torch.maximum(edges[:-1, None], pos[None])
    hi = torch.minimum(edges[1:, None], pos[None] + 1)
    w = (hi - lo).clamp_min(0)
    return (w / w.sum(1, keepdim=True)).float()


class LandmarkNet(nn.Module):
    """Map RGB chips (N, 3, 150, 150) in -1..1 to 68 landmarks (N, 68, 2) in 0..1 of the chip."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        chans = [(3, w, 2), (w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1)]
        chans += [(4 * w, 4 * w, 2), (4 * w, 4 * w, 2)]  # 64 -> 32 -> 16 -> 8 -> 4
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, s, 1) for a, b, s in chans)
        self.head = nn.Linear(4 * w * 16, 136)
        nn.init.zeros_(self.head.weight)  # start at the mean shape
        self.register_buffer("resample", _area(CHIP, INPUT), persistent=False)  # (64, 150)
        self.register_buffer("mean_shape", torch.full((68, 2), 0.5))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        a = self.resample
        return self.from_small(a @ rgb @ a.T)  # (N, 3, 64, 64) -> (N, 68, 2)

    def from_small(self, x: torch.Tensor) -> torch.Tensor:
        """Landmarks (N, 68, 2) of chips already resampled to (N, 3, 64, 64)."""
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)  # (N, 4w, 4, 4) at the end
        off = self.head(x.flatten(1)).view(-1, 68, 2)
        return self.mean_shape + 0.1 * off  # (N, 68, 2)


def load_landmark_net(path: Path | None = None) -> LandmarkNet:
    """Return the shipped regressor, frozen; a clear error when its weights are missing."""
    path = path or WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"landmark regressor weights not found at {path}: "
            "train them with python -m training.hpvfg2.landmarks_fit"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = LandmarkNet(int(state.pop("width")))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False)


def heatmaps(points: torch.Tensor, size: int, sigma: float = 0.03) -> torch.Tensor:
    """Render landmarks (N, 68, 2) in 0..1 as part heatmaps (N, len(GROUPS), size, size)."""
    grid = (torch.arange(size, dtype=points.dtype, device=points.device) + 0.5) / size
    dx = (grid[None, None, :] - points[..., 0:1]) ** 2  # (N, 68, size) along x
    dy = (grid[None, None, :] - points[..., 1:2]) ** 2  # (N, 68, size) along y
    g = torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma**2))  # (N, 68, s, s)
    return torch.stack([g[:, a:b].amax(1) for a, b in GROUPS], 1)


def landmark_error(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean point error normalised by the outer-eye-corner distance (N,), as in 300-W."""
    iod = (ref[:, 36] - ref[:, 45]).norm(dim=-1).clamp_min(1e-6)
    return (pred - ref).norm(dim=-1).mean(1) / iod
