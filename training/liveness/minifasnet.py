"""MiniFASNet (V1SE and V2 at 80x80) built from the widths stored in a checkpoint.

A torch definition of the silent face anti-spoofing networks Minivision published under
Apache-2.0 (github.com/minivision-ai/Silent-Face-Anti-Spoofing). Rather than carry their
pruned-width tables, every layer's width is read from the state dict itself, so one
builder loads both published checkpoints. Parameter names follow the checkpoints so the
weights load strictly.

Topology (80x80 BGR input, 0..255, no normalisation): a 3x3 stride-2 conv, a 3x3
depthwise conv, then four stages of inverted bottlenecks (1x1 expand, 3x3 depthwise,
1x1 linear projection) with stride-2 transitions at 40 -> 20 -> 10 -> 5, a 1x1 conv to
512 channels, a 5x5 depthwise "global" conv, a 512 -> 128 linear, batch norm and a
three-way classifier. In the SE variant the last block of each stage gates its residual
branch with squeeze-and-excitation. Class 1 is a live face; 0 and 2 are attacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

STAGES = ("conv_3", "conv_4", "conv_5")  # residual stages, in order
TRANSITIONS = ("conv_23", "conv_34", "conv_45")  # the stride-2 bottleneck before each


class ConvBnAct(nn.Module):
    """Convolution, batch norm and (unless ``linear``) a per-channel PReLU."""

    def __init__(self, cin: int, cout: int, k: int, s: int = 1, groups: int = 1, linear=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, (k - 1) // 2 if k == 3 else 0, groups=groups,
                              bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = None if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Squeeze(nn.Module):
    """Squeeze-and-excitation with batch-normed 1x1 convs, as in the SE checkpoints."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        g = torch.relu(self.bn1(self.fc1(g)))
        return x * torch.sigmoid(self.bn2(self.fc2(g)))


class Bottleneck(nn.Module):
    """1x1 expand, 3x3 depthwise (stride ``s``), 1x1 linear projection; residual at s=1."""

    def __init__(self, cin: int, mid: int, cout: int, s: int, se_hidden: int = 0):
        super().__init__()
        self.conv = ConvBnAct(cin, mid, 1)
        self.conv_dw = ConvBnAct(mid, mid, 3, s, groups=mid)
        self.project = ConvBnAct(mid, cout, 1, linear=True)
        self.residual = s == 1
        self.se_module = Squeeze(cout, se_hidden) if se_hidden else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if not self.residual:
            return y
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y


class Stage(nn.Module):
    def __init__(self, blocks: list[Bottleneck]):
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _shape(sd: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    return tuple(sd[name].shape)


def _bottleneck(sd: Mapping[str, torch.Tensor], prefix: str, s: int) -> Bottleneck:
    """Build the block stored under ``prefix`` with the widths its weights have."""
    mid, cin = _shape(sd, f"{prefix}.conv.conv.weight")[:2]
    cout = _shape(sd, f"{prefix}.project.conv.weight")[0]
    se = f"{prefix}.se_module.fc1.weight"
    return Bottleneck(cin, mid, cout, s, _shape(sd, se)[0] if se in sd else 0)


class MiniFASNet(nn.Module):
    """The network whose widths ``state_dict`` holds; load it with ``from_state_dict``."""

    def __init__(self, sd: Mapping[str, torch.Tensor]):
        super().__init__()
        c0 = _shape(sd, "conv1.conv.weight")[0]
        self.conv1 = ConvBnAct(3, c0, 3, 2)  # 80 -> 40
        self.conv2_dw = ConvBnAct(c0, c0, 3, 1, groups=c0)
        for transition, stage in zip(TRANSITIONS, STAGES, strict=True):
            setattr(self, transition, _bottleneck(sd, transition, 2))  # halves the side
            blocks = {
                int(m.group(1)) for k in sd if (m := re.match(rf"{stage}\.model\.(\d+)\.", k))
            }
            chain = [_bottleneck(sd, f"{stage}.model.{i}", 1) for i in range(len(blocks))]
            setattr(self, stage, Stage(chain))
        wide, cin = _shape(sd, "conv_6_sep.conv.weight")[:2]
        self.conv_6_sep = ConvBnAct(cin, wide, 1)
        k = _shape(sd, "conv_6_dw.conv.weight")[-1]  # 5 at 80x80: the whole 5x5 map
        self.conv_6_dw = ConvBnAct(wide, wide, k, groups=wide, linear=True)
        emb = _shape(sd, "linear.weight")[0]
        self.linear = nn.Linear(wide, emb, bias=False)
        self.bn = nn.BatchNorm1d(emb)
        self.prob = nn.Linear(emb, _shape(sd, "prob.weight")[0], bias=False)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> MiniFASNet:
        """Build and strictly load a checkpoint (a ``module.`` prefix is dropped)."""
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        model = cls(sd)
        model.load_state_dict(sd, strict=True)
        return model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (N, 3) for BGR crops (N, 3, 80, 80) in 0..255."""
        x = self.conv2_dw(self.conv1(x))
        for transition, stage in zip(TRANSITIONS, STAGES, strict=True):
            x = getattr(self, stage)(getattr(self, transition)(x))
        x = self.conv_6_dw(self.conv_6_sep(x)).flatten(1)  # (N, 512)
        return self.prob(self.bn(self.linear(x)))
