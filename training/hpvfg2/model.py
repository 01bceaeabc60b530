"""HPVFG 2.0: re-render the whole face region from a keyed identity and identity-free structure.

Unlike 1.0.0, which edited the original's pixels, the generator never sees the original's
face texture. Its inputs are:

- the context outside the face region (background, hair, ears), for seamless blending;
- the structure of the face: its luminance low-passed to ``structure`` x ``structure``
  cells and normalised per image (head pose, expression and light direction survive, skin
  tone and fine detail do not);
- the keyed virtual identity z' = P(z, k), injected by AdaIN in every decoder layer,
  continuously, so nearby z' render the same-looking person.
- heatmaps of the original's 68 landmarks (one channel per part), from a tiny frozen
  regressor inside the module, so an exported graph computes them from the chip.

Inside the region, every output pixel comes from the decoder, so nothing of the original's
texture passes through by construction (tests/test_hpvfg2.py checks it). The module keeps
1.0.0's interface, ``(chip, z, z_virtual) -> virtual chip``, so bundles, the edge and the
service are unchanged; ``z`` is accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.face.align import soft_mask
from training.hpvfg2.landmarks import GROUPS, heatmaps, load_landmark_net

CHIP = 150  # DLIB_150 chips, BGR, values 0..255


@dataclass
class RenderConfig:
    arch: str = "render"  # tells export which generator class a checkpoint holds
    work: int = 96  # working resolution of the re-rendered face
    structure: int = 12  # side of the low-pass luminance map that carries pose/expression
    # Channels at full working resolution, doubled per level. The full-resolution layers
    # dominate the edge cost: 21 ms per face at 16 against 57 ms at 32 (benchmarks/render_cost.py).
    base: int = 16
    levels: int = 4  # down-sampling levels of the U-Net (work must divide by 2**levels)
    style: int = 256  # width of the identity style vector
    inset: float = 0.06  # ellipse inset of the replaced region, as a fraction of the chip
    feather: float = 0.08  # width of the blend at the region's rim, as a fraction
    # Condition the decoder on landmark heatmaps of the original, computed inside the graph
    # by the shipped regressor (training/assets/landmarks68.pt): pose and expression.
    landmarks: bool = True


def region_mask(size: int, cfg: RenderConfig) -> torch.Tensor:
    """Return the soft face-region mask (1, 1, size, size): 1 inside, fading at the rim."""
    m = torch.from_numpy(soft_mask(CHIP, inset=cfg.inset, feather=cfg.feather)).float()
    return resize_area(m[None, None], size)


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Return the (n_out, n_in) matrix of area resampling along one axis.

    Resizing as two matrix products exports to ONNX at any ratio, where ``mode="area"``
    and adaptive pooling do not.
    """
    edges = torch.linspace(0, n_in, n_out + 1, dtype=torch.float64)
    pos = torch.arange(n_in, dtype=torch.float64)
    lo = torch.maximum(edges[:-1, None], pos[None])  # overlap of output cell and input pixel
    hi = torch.minimum(edges[1:, None], pos[None] + 1)
    w = (hi - lo).clamp_min(0)
    return (w / w.sum(1, keepdim=True)).float()


def resize_area(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resample (N, C, H, W) square images to (N, C, size, size)."""
    a = area_matrix(x.shape[-1], size).to(x.device)
    return a @ x @ a.T


def structure_map(rgb: torch.Tensor, cells: int) -> torch.Tensor:
    """(N, 3, H, W) in -1..1 -> (N, 1, cells, cells) luminance, zero mean and unit std per image."""
    lum = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    low = resize_area(lum, cells)
    mean = low.mean(dim=(2, 3), keepdim=True)
    std = low.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (low - mean) / std


class AdaIN(nn.Module):
    """Instance-normalise features, then scale and shift them by the identity style."""

    def __init__(self, channels: int, style: int) -> None:
        super().__init__()
        self.affine = nn.Linear(style, 2 * channels)
        nn.init.normal_(self.affine.weight, std=0.02)  # start close to plain normalisation
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(w)[:, :, None, None].chunk(2, dim=1)  # (N, C, 1, 1) each
        return F.instance_norm(x) * (1 + gamma) + beta


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int, style: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in + c_skip, c_out, 3, 1, 1)
        self.norm1 = AdaIN(c_out, style)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.norm2 = AdaIN(c_out, style)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.norm1(self.conv1(torch.cat([x, skip], 1)), w), 0.2)
        return F.leaky_relu(self.norm2(self.conv2(x), w), 0.2)


class RenderGenerator(nn.Module):
    def __init__(self, cfg: RenderConfig) -> None:
        super().__init__()
        if cfg.work % (2**cfg.levels):
            raise ValueError(f"work {cfg.work} must be divisible by 2**levels = {2**cfg.levels}")
        self.cfg = cfg
        self.register_buffer("mask", region_mask(cfg.work, cfg))  # (1, 1, W, W)
        self.register_buffer("full_mask", region_mask(CHIP, cfg))  # (1, 1, 150, 150)
        widths = [min(cfg.base * 2**i, 256) for i in range(cfg.levels + 1)]
        self.stem = nn.Conv2d(3 + 1 + 1, widths[0], 3, 1, 1)  # context, mask, structure
        if cfg.landmarks:
            self.marks = load_landmark_net()  # frozen; in the exported graph, so the edge runs it
            # Beside the stem, not inside it: zero at first, so weights trained without
            # landmarks (same parameter names) render exactly as before.
            self.stem_marks = nn.Conv2d(len(GROUPS), widths[0], 3, 1, 1)
            nn.init.zeros_(self.stem_marks.weight)
            nn.init.zeros_(self.stem_marks.bias)
        self.down = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1) for i in range(cfg.levels)
        )
        self.style = nn.Sequential(
            nn.Linear(128, cfg.style),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.style, cfg.style),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.style, cfg.style),
        )
        self.bottleneck = nn.Conv2d(widths[-1], widths[-1], 3, 1, 1)
        self.bottleneck_norm = AdaIN(widths[-1], cfg.style)
        self.up = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], cfg.style)
            for i in reversed(range(cfg.levels))
        )
        self.to_rgb = nn.Conv2d(widths[0], 3, 1)

    def inputs(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, 150, 150) RGB -1..1 -> the generator's view (N, 5, W, W): no face texture."""
        w, m = self.cfg.work, self.mask
        small = resize_area(rgb, w)  # (N, 3, W, W)
        context = small * (1 - m)
        structure = structure_map(
            small * m + (1 - m) * small.mean((2, 3), keepdim=True), self.cfg.structure
        )
        structure = F.interpolate(structure, size=(w, w), mode="bilinear", align_corners=False)
        return torch.cat([context, torch.ones_like(small[:, :1]) * m, structure * m], 1)

    def landmarks(self, rgb: torch.Tensor) -> torch.Tensor:
        """The regressor's 68 landmarks (N, 68, 2) in 0..1 of RGB chips (N, 3, 150, 150)."""
        return self.marks(rgb)

    def render(self, rgb: torch.Tensor, z_virtual: torch.Tensor) -> torch.Tensor:
        """Return the decoder's face (N, 3, W, W) in -1..1 for RGB chips and identities z'."""
        w = self.style(z_virtual)  # (N, style)
        x = self.stem(self.inputs(rgb))  # (N, C0, W, W)
        if self.cfg.landmarks:
            x = x + self.stem_marks(heatmaps(self.marks(rgb), self.cfg.work))
        x = F.leaky_relu(x, 0.2)
        skips = []
        for conv in self.down:
            skips.append(x)
            x = F.leaky_relu(conv(x), 0.2)  # halves the side
        x = F.leaky_relu(self.bottleneck_norm(self.bottleneck(x), w), 0.2)  # (N, C_L, W/2^L, .)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip, w)
        return torch.tanh(self.to_rgb(x))  # (N, 3, W, W)

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        """Load weights; those from before landmark conditioning get the branch switched off."""
        state = dict(state)
        for name, value in super().state_dict().items():
            if name.startswith(("marks.", "stem_marks.")) and name not in state:
                state[name] = value  # the shipped regressor, and a zero stem: renders as before
        return super().load_state_dict(state, strict, assign)

    def composite(self, rgb: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """Blend the rendered face into the full chip: original outside, rendered inside."""
        up = F.interpolate(face, size=(CHIP, CHIP), mode="bilinear", align_corners=False)
        return self.full_mask * up + (1 - self.full_mask) * rgb

    def forward(self, chip: torch.Tensor, z: torch.Tensor, z_virtual: torch.Tensor) -> torch.Tensor:
        # chip: (N, 3, 150, 150) BGR 0..255; z (unused), z_virtual: (N, 128) unit vectors
        rgb = chip.flip(1) / 127.5 - 1.0
        out = self.composite(rgb, self.render(rgb, z_virtual))
        return ((out + 1.0) * 127.5).clamp(0.0, 255.0).flip(1)  # (N, 3, 150, 150) BGR


class PatchDiscriminator(nn.Module):
    """Score overlapping patches of working-resolution faces as real (high) or rendered (low)."""

    def __init__(self, base: int = 32, levels: int = 3) -> None:
        super().__init__()
        layers, c = [nn.Conv2d(3, base, 4, 2, 1), nn.LeakyReLU(0.2)], base
        for _ in range(levels - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        layers.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, W, W) -> (N, 1, W/8, W/8)
        return self.net(x)
