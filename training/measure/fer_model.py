"""Rebuild the FER2013 mini-XCEPTION expression CNN in torch from its Keras HDF5 weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import h5py

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@dataclass
class FerConfig:
    image_size: int = 64  # square input; the 'same' pads are fixed from it so export is static
    in_channels: int = 1
    stem_channels: tuple[int, int] = (8, 8)
    block_channels: tuple[int, ...] = (16, 32, 64, 128)
    n_classes: int = 7
    bn_eps: float = 1e-3  # Keras' default; torch's 1e-5 would shift every normalised activation


def same_pads(size: int, k: int, s: int) -> tuple[int, ...]:
    """Return F.pad's (left, right, top, bottom) for TF 'same': an odd pixel goes right/bottom."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return (total // 2, total - total // 2) * 2


class SeparableConv(nn.Module):
    """Apply a depthwise 3x3 then a pointwise 1x1, both without bias, as Keras SeparableConv2D."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))  # (N, c_in, H, W) -> (N, c_out, H, W)


class XceptionBlock(nn.Module):
    """Halve the resolution through two separable convs and a max-pool, with a 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, size: int, eps: float):
        super().__init__()
        self.pool_pad = same_pads(size, 3, 2)  # 1x1 stride-2 'same' never pads: no shortcut pad
        self.sep1, self.bn1 = SeparableConv(c_in, c_out), nn.BatchNorm2d(c_out, eps=eps)
        self.sep2, self.bn2 = SeparableConv(c_out, c_out), nn.BatchNorm2d(c_out, eps=eps)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.bn_short = nn.BatchNorm2d(c_out, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.sep1(x)))  # (N, c_out, H, W)
        h = self.bn2(self.sep2(h))  # the Keras graph has no ReLU between this BN and the pool
        # -inf padding so a padded cell never wins the max, as in TF's 'same' pooling
        h = F.max_pool2d(F.pad(h, self.pool_pad, value=float("-inf")), 3, 2)  # H -> ceil(H/2)
        return h + self.bn_short(self.shortcut(x))  # no ReLU after the add, as in the Keras graph


class MiniXception(nn.Module):
    """Map scaled 64x64 grayscale faces to probabilities over the seven FER2013 expressions."""

    def __init__(self, cfg: FerConfig):
        super().__init__()
        c1, c2 = cfg.stem_channels
        self.stem = nn.Sequential(  # 'valid' 3x3 convs: 64 -> 62 -> 60
            nn.Conv2d(cfg.in_channels, c1, 3, bias=False),
            nn.BatchNorm2d(c1, eps=cfg.bn_eps),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, bias=False),
            nn.BatchNorm2d(c2, eps=cfg.bn_eps),
            nn.ReLU(),
        )
        widths, size, blocks = (c2, *cfg.block_channels), cfg.image_size - 4, []
        for c_in, c_out in pairwise(widths):
            blocks.append(XceptionBlock(c_in, c_out, size, cfg.bn_eps))
            size = -(-size // 2)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(widths[-1], cfg.n_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, 1, 64, 64) in [-1, 1] -> (N, 8, 60, 60)
        for block in self.blocks:
            x = block(x)  # 60 -> 30 -> 15 -> 8 -> 4
        logits = self.head(x).mean(dim=(2, 3))  # (N, 7, 4, 4) -> (N, 7): global average pool
        return logits.softmax(dim=-1)


class _KerasGraph:
    """Walk a Keras functional-model config backwards from its output."""

    def __init__(self, model_config: dict):
        cfg = model_config["config"]
        self.layers = {layer["name"]: layer for layer in cfg["layers"]}
        ((self.output, _, _),) = cfg["output_layers"]

    def cls(self, name: str) -> str:
        return self.layers[name]["class_name"]

    def inputs(self, name: str) -> list[str]:
        nodes = self.layers[name]["inbound_nodes"]  # Keras 2: [[[name, node, tensor, kwargs]]]
        return [inbound[0] for inbound in nodes[0]] if nodes else []

    def walk(self, name: str, *classes: str) -> tuple[list[str], str]:
        """Step back through single-input layers of these classes; return them and their feeder."""
        seen = []
        for want in classes:
            if self.cls(name) != want or len(self.inputs(name)) != 1:
                raise ValueError(f"expected a one-input {want} at {name!r}, not {self.cls(name)}")
            seen.append(name)
            (name,) = self.inputs(name)
        return seen, name

    def expect(self, name: str, **want) -> dict:
        """Return a layer's config after checking the hyperparameters this port hard-codes."""
        cfg = self.layers[name]["config"]
        got = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in want}
        if got != want:
            raise ValueError(f"layer {name!r}: expected {want}, config has {got}")
        return cfg


def _arrays(group: h5py.Group, name: str) -> dict[str, np.ndarray]:
    """Return a layer's stored arrays keyed by short name (kernel, gamma, moving_mean, ...)."""
    g = group[name]
    names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
    return {n.split("/")[-1].split(":")[0]: np.asarray(g[n], dtype=np.float32) for n in names}


def _set(param: torch.Tensor, value: np.ndarray) -> None:
    # copy_ would silently broadcast a wrong shape, so check it ourselves
    if tuple(param.shape) != value.shape:
        raise ValueError(f"weight shape {value.shape} does not fit {tuple(param.shape)}")
    param.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _load_conv(m: nn.Conv2d, w: dict) -> None:
    _set(m.weight, w["kernel"].transpose(3, 2, 0, 1))  # Keras (kh, kw, in, out) -> (out, in, ..)
    if m.bias is not None:
        _set(m.bias, w["bias"])


def _load_sep(m: SeparableConv, w: dict) -> None:
    dw = w["depthwise_kernel"]  # (kh, kw, in, multiplier=1) -> torch grouped (in, 1, kh, kw)
    _set(m.depthwise.weight, dw.transpose(2, 3, 0, 1).reshape(-1, 1, *dw.shape[:2]))
    _set(m.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1))


def _load_bn(m: nn.BatchNorm2d, w: dict) -> None:
    _set(m.weight, w["gamma"])
    _set(m.bias, w["beta"])
    _set(m.running_mean, w["moving_mean"])
    _set(m.running_var, w["moving_variance"])


def load_keras_h5(path: str | Path) -> MiniXception:
    """Build the model in eval mode from a Keras 2 HDF5 file, following its model_config graph."""
    import h5py  # only to read Keras files: training loads torch weights and has no h5py

    with h5py.File(path, "r") as f:
        g = _KerasGraph(json.loads(f.attrs["model_config"]))
        weights = f.get("model_weights", f)  # a full save nests weights; save_weights does not
        (softmax, gap, head), x = g.walk(g.output, "Activation", "GlobalAveragePooling2D", "Conv2D")
        blocks = []
        while g.cls(x) == "Add":  # each Add joins a pooled main path and a strided shortcut
            pool_in, short_in = sorted(g.inputs(x), key=lambda n: g.cls(n) != "MaxPooling2D")
            kinds = ("BatchNormalization", "SeparableConv2D", "Activation") * 2
            main, src = g.walk(pool_in, "MaxPooling2D", *kinds[:-1])
            short, short_src = g.walk(short_in, "BatchNormalization", "Conv2D")
            if src != short_src:
                raise ValueError(f"block {x!r}: main path and shortcut start at different layers")
            blocks.insert(0, (main, short))
            x = src
        kinds = ("Activation", "BatchNormalization", "Conv2D")
        stem, inp = g.walk(x, *kinds, *kinds)
        if g.cls(inp) != "InputLayer":
            raise ValueError(f"expected the stem to start at an InputLayer, found {g.cls(inp)}")
        _, height, width, channels = g.layers[inp]["config"]["batch_input_shape"]
        if height != width:
            raise ValueError(f"expected a square input, config has {height}x{width}")

        # check every hyperparameter the torch modules hard-code, so a different file fails loudly
        g.expect(softmax, activation="softmax")
        for name in (stem[0], stem[3], *(m[3] for m, _ in blocks)):
            g.expect(name, activation="relu")
        bns = [stem[1], stem[4], *(n for m, s in blocks for n in (m[1], m[4], s[0]))]
        eps = {g.expect(n, axis=-1, center=True, scale=True)["epsilon"] for n in bns}
        if len(eps) != 1:
            raise ValueError(f"expected one BatchNorm epsilon, config has {sorted(eps)}")
        conv = dict(activation="linear", data_format="channels_last", dilation_rate=(1, 1))
        conv_nb, cl = dict(use_bias=False, **conv), dict(data_format="channels_last")
        for name in (stem[5], stem[2]):
            g.expect(name, kernel_size=(3, 3), strides=(1, 1), padding="valid", **conv_nb)
        widths = []
        for main, short in blocks:
            for name in (main[2], main[5]):
                sep = dict(kernel_size=(3, 3), strides=(1, 1), depth_multiplier=1, **conv_nb)
                widths.append(g.expect(name, padding="same", **sep)["filters"])
            g.expect(main[0], pool_size=(3, 3), strides=(2, 2), padding="same", **cl)
            sc = g.expect(short[1], kernel_size=(1, 1), strides=(2, 2), padding="same", **conv_nb)
            if not widths[-2] == widths[-1] == sc["filters"]:
                raise ValueError(f"block {main[0]!r}: inconsistent filter counts")
        hc = g.expect(
            head, kernel_size=(3, 3), strides=(1, 1), padding="same", use_bias=True, **conv
        )
        g.expect(gap, **cl)

        cfg = FerConfig(
            image_size=height,
            in_channels=channels,
            stem_channels=tuple(g.layers[n]["config"]["filters"] for n in (stem[5], stem[2])),
            block_channels=tuple(widths[::2]),
            n_classes=hc["filters"],
            bn_eps=eps.pop(),
        )
        model = MiniXception(cfg).eval()
        w = partial(_arrays, weights)
        with torch.no_grad():
            _load_conv(model.stem[0], w(stem[5]))
            _load_bn(model.stem[1], w(stem[4]))
            _load_conv(model.stem[3], w(stem[2]))
            _load_bn(model.stem[4], w(stem[1]))
            for block, (main, short) in zip(model.blocks, blocks, strict=True):
                _load_sep(block.sep1, w(main[5]))
                _load_bn(block.bn1, w(main[4]))
                _load_sep(block.sep2, w(main[2]))
                _load_bn(block.bn2, w(main[1]))
                _load_conv(block.shortcut, w(short[1]))
                _load_bn(block.bn_short, w(short[0]))
            _load_conv(model.head, w(head))
    return model
