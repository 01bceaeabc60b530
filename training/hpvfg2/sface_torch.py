"""OpenCV's SFace recognizer as a native torch module, built from its ONNX weights.

SFace is a MobileFaceNet-style chain: an input affine, 27 Conv-BatchNorm-PReLU layers, a
BatchNorm, a fully connected layer and a last BatchNorm. The node-by-node interpreter
(:class:`training.recognizer.onnx_graph.OnnxGraph`) runs 88 small ops per forward pass;
here every BatchNorm is folded into the convolution or linear layer before it, which leaves
27 convolutions, 27 PReLUs and one matrix product: fewer kernel launches, channels_last and
bf16 autocast apply as to any torch module, and ``torch.compile`` sees plain layers.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _bn_scale_shift(arrays: list[np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Return BatchNorm's inference form as per-channel ``scale * x + shift``."""
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


class SFaceNet(nn.Module):
    """SFace with folded BatchNorms: (N, 3, 112, 112) RGB 0..255 -> (N, 128) raw embedding."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        model = onnx.load(str(path))
        w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
        nodes = list(model.graph.node)
        ops = [n.op_type for n in nodes]
        expect = ["Sub", "Mul"] + ["Conv", "BatchNormalization", "PRelu"] * 27
        expect += ["BatchNormalization", "Dropout", "Flatten", "Gemm", "BatchNormalization"]
        if ops != expect:
            raise NotImplementedError(f"{path}: not the SFace layer chain this module rebuilds")
        for prev, node in itertools.pairwise(nodes):
            if node.input[0] != prev.output[0]:
                raise NotImplementedError(f"{path}: node {node.name or node.op_type} branches")
        # (x - a) * m: kept apart from the first conv, whose zero padding would change it.
        self.register_buffer("offset", torch.tensor(float(w[nodes[0].input[1]].item())))
        self.register_buffer("factor", torch.tensor(float(w[nodes[1].input[1]].item())))
        self.convs = nn.ModuleList()
        self.prelus = nn.ModuleList()
        for k in range(27):
            conv, bn, prelu = nodes[2 + 3 * k : 5 + 3 * k]
            a = _attrs(conv)
            kernel = w[conv.input[1]]  # (C_out, C_in / groups, kh, kw)
            scale, shift = _bn_scale_shift([w[n] for n in bn.input[1:]], _attrs(bn)["epsilon"])
            bias = w[conv.input[2]] * scale + shift if len(conv.input) > 2 else shift
            pads = a.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise NotImplementedError(f"{path}: asymmetric padding {pads}")
            layer = nn.Conv2d(
                kernel.shape[1] * a.get("group", 1), kernel.shape[0], kernel.shape[2:],
                a.get("strides", [1, 1]), pads[:2], a.get("dilations", [1, 1]),
                a.get("group", 1),
            )  # fmt: skip
            layer.weight.data = torch.from_numpy(kernel * scale[:, None, None, None]).float()
            layer.bias.data = torch.from_numpy(bias).float()
            slope = w[prelu.input[1]].reshape(-1)
            act = nn.PReLU(len(slope))
            act.weight.data = torch.from_numpy(slope).float()
            self.convs.append(layer)
            self.prelus.append(act)
        bn1, _, _, gemm, fc_bn = nodes[-5:]
        s1, t1 = _bn_scale_shift([w[n] for n in bn1.input[1:]], _attrs(bn1)["epsilon"])
        g = _attrs(gemm)
        fc = w[gemm.input[1]] if g.get("transB", 0) else w[gemm.input[1]].T  # (128, C*H*W)
        fc_b = w[gemm.input[2]] * g.get("beta", 1.0)
        fc = fc * g.get("alpha", 1.0)
        per = fc.shape[1] // len(s1)  # flatten order is (C, H, W): H*W entries per channel
        fc_b = fc_b + fc @ np.repeat(t1, per)  # fold bn1 into the linear layer
        fc = fc * np.repeat(s1, per)[None]
        s2, t2 = _bn_scale_shift([w[n] for n in fc_bn.input[1:]], _attrs(fc_bn)["epsilon"])
        self.fc = nn.Linear(fc.shape[1], fc.shape[0])
        self.fc.weight.data = torch.from_numpy(fc * s2[:, None]).float()
        self.fc.bias.data = torch.from_numpy(fc_b * s2 + t2).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 112, 112) RGB 0..255 in ArcFace geometry
        x = (x - self.offset) * self.factor
        for conv, act in zip(self.convs, self.prelus, strict=True):
            x = act(conv(x))  # ends at (N, 1024, 7, 7)
        return F.linear(x.flatten(1), self.fc.weight, self.fc.bias)  # (N, 128)
