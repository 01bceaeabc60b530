"""dlib's face recognition ResNet (``dnn_face_recognition_ex.cpp``), rebuilt in torch.

The network is a 29-conv ResNet on a 150x150 RGB chip with a 128-D output. dlib stores
batch norm already folded into ``affine`` layers; we fold those once more into the
preceding convolution, so the torch module is convolutions, ReLUs and pools only.

Two dlib behaviours matter for parity:
- convolutions and pools with stride 2 have no padding, so 35 -> 17 -> 8 -> 3 (conv) but
  the pooled shortcut goes 8 -> 4;
- ``add_prev`` adds tensors of different sizes by zero-padding the smaller one at the
  bottom-right (and in the extra channels), so the output takes the larger size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.recognizer.dlib_format import DlibFormatError, DlibNet, Layer


@dataclass
class DlibResNetConfig:
    input_size: int = 150
    stem_width: int = 32
    # (width, number of residual blocks, first block downsamples) per stage
    stages: tuple[tuple[int, int, bool], ...] = (
        (32, 3, False),
        (64, 4, True),
        (128, 3, True),
        (256, 3, True),
        (256, 1, True),
    )
    embedding_dim: int = 128
    mean_rgb: tuple[float, float, float] = (122.782, 117.001, 104.298)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Add two maps as dlib does: zero-pad each to the larger channels, rows and columns."""
    c = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pad) if any(pad) else t

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, pad)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        y = self.conv2(F.relu(self.conv1(x)))  # (B, C_out, H', W')
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, shortcut))


class DlibResNet(nn.Module):
    """Map RGB face chips (B, 3, 150, 150), values 0..255, to 128-D embeddings."""

    def __init__(self, config: DlibResNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DlibResNetConfig()
        self.stem = nn.Conv2d(3, cfg.stem_width, 7, 2, 0)
        blocks, width = [], cfg.stem_width
        for c_out, n, down in cfg.stages:
            for i in range(n):
                blocks.append(ResidualBlock(width, c_out, down and i == 0))
                width = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, cfg.embedding_dim, bias=False)
        mean = torch.tensor(cfg.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / 256.0  # dlib's input_rgb_image scaling
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)  # (B, 32, 35, 35)
        x = self.blocks(x)  # (B, 256, 2, 2)
        return x.mean(dim=(2, 3))  # (B, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, 128)

    def convs(self) -> list[nn.Conv2d]:
        out = [self.stem]
        for block in self.blocks:
            out += [block.conv1, block.conv2]
        return out


def _fold(con: Layer, affine: Layer) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta = affine.arrays["gamma"], affine.arrays["beta"]
    weight = con.arrays["weight"] * gamma[:, None, None, None]
    bias = con.arrays.get("bias", np.zeros_like(gamma)) * gamma + beta
    return weight, bias


def from_dlib(net: DlibNet) -> DlibResNet:
    """Build the torch model and load the weights of a parsed dlib network."""
    config = DlibResNetConfig(input_size=net.input_size, mean_rgb=net.input_mean_rgb)
    model = DlibResNet(config)
    pairs = []
    layers = net.layers
    for i, layer in enumerate(layers):
        if layer.kind == "con":
            if i + 1 >= len(layers) or layers[i + 1].kind != "affine":
                raise DlibFormatError(f"conv layer {i} is not followed by an affine layer")
            pairs.append(_fold(layer, layers[i + 1]))
    convs = model.convs()
    if len(pairs) != len(convs):
        raise DlibFormatError(f"file has {len(pairs)} convolutions, model expects {len(convs)}")
    with torch.no_grad():
        for conv, (weight, bias) in zip(convs, pairs, strict=True):
            if tuple(conv.weight.shape) != weight.shape:
                raise DlibFormatError(f"shape {weight.shape} != {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))
        fc = layers[-1]
        if fc.kind != "fc":
            raise DlibFormatError("the last layer is not fully connected")
        model.fc.weight.copy_(torch.from_numpy(fc.arrays["weight"].T.copy()))
    return model.eval()
