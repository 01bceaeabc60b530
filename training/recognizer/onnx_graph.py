"""Run small convolutional ONNX recognizers as differentiable torch modules.

The identity losses of HPVFG 2.0 need gradients through recognizers that ship only as ONNX
(OpenCV's SFace) or whose torch port is rebuilt from the repository's ONNX file (dlib's
ResNet), also on a training machine that has torch but neither dlib nor the internet. The
graphs are plain feed-forward CNNs, so a short interpreter over their nodes is enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from training.recognizer.dlib_resnet import DlibResNet


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(p: list[int]) -> tuple[int, int]:
    if p[:2] != p[2:]:
        raise NotImplementedError(f"asymmetric padding {p} is not supported")
    return int(p[0]), int(p[1])


class OnnxGraph(nn.Module):
    """Evaluate a feed-forward ONNX graph with torch ops; weights become frozen buffers."""

    SUPPORTED: ClassVar[set[str]] = {
        "Conv",
        "BatchNormalization",
        "PRelu",
        "Relu",
        "Add",
        "Sub",
        "Mul",
        "Dropout",
        "Flatten",
        "Gemm",
        "MaxPool",
        "GlobalAveragePool",
    }

    def __init__(self, path: Path) -> None:
        super().__init__()
        model = onnx.load(str(path))
        graph = model.graph
        unknown = {n.op_type for n in graph.node} - self.SUPPORTED
        if unknown:
            raise NotImplementedError(f"{path}: unsupported ONNX ops {sorted(unknown)}")
        self._names: dict[str, str] = {}
        for i, init in enumerate(graph.initializer):
            key = f"w{i}"
            value = numpy_helper.to_array(init)
            if value.dtype == np.float16:  # packed for carrying; compute in float32
                value = value.astype(np.float32)
            self.register_buffer(key, torch.from_numpy(value.copy()))
            self._names[init.name] = key
        weights = set(self._names)
        self.input_name = next(i.name for i in graph.input if i.name not in weights)
        self.output_name = graph.output[0].name
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}

        def get(name: str) -> torch.Tensor:
            return env[name] if name in env else getattr(self, self._names[name])

        for op, ins, outs, a in self.nodes:
            args = [get(n) for n in ins if n]
            env[outs[0]] = self._run(op, args, a)
        return env[self.output_name]

    @staticmethod
    def _run(op: str, args: list[torch.Tensor], a: dict) -> torch.Tensor:
        if op == "Conv":
            pad = _pads(a.get("pads", [0, 0, 0, 0]))
            bias = args[2] if len(args) > 2 else None
            return F.conv2d(
                args[0], args[1], bias, a.get("strides", [1, 1]), pad, a.get("dilations", [1, 1]),
                a.get("group", 1),
            )  # fmt: skip
        if op == "BatchNormalization":
            x, g, b, mean, var = args
            return F.batch_norm(x, mean, var, g, b, False, 0.0, a.get("epsilon", 1e-5))
        if op == "PRelu":
            x, slope = args
            return torch.where(x >= 0, x, x * slope.reshape(1, -1, 1, 1) if x.ndim == 4 else slope)
        if op == "Relu":
            return F.relu(args[0])
        if op in ("Add", "Sub", "Mul"):
            fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}[op]
            return fn(args[0], args[1])
        if op == "Dropout":
            return args[0]
        if op == "Flatten":
            return args[0].flatten(a.get("axis", 1))
        if op == "Gemm":
            x, w = args[0], args[1]
            w = w.T if a.get("transB", 0) else w
            y = a.get("alpha", 1.0) * (x @ w)
            return y + a.get("beta", 1.0) * args[2] if len(args) > 2 else y
        if op == "MaxPool":
            return F.max_pool2d(args[0], a["kernel_shape"], a.get("strides"), _pads(a["pads"]))
        if op == "GlobalAveragePool":
            return args[0].mean(dim=(2, 3), keepdim=True)
        raise NotImplementedError(op)


def dlib_port_from_onnx(path: Path) -> DlibResNet:
    """Rebuild the torch port of dlib's recognizer from the repository's exported ONNX file.

    The export keeps the torch parameter names as initializer names, so no dlib install
    (and no ``face-recognition-models``) is needed, e.g. on a GPU machine.
    """
    model = onnx.load(str(path))
    state = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    # The final Linear is exported as MatMul with an anonymous, transposed weight.
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    state["fc.weight"] = state.pop(matmul.input[1]).T.contiguous()
    port = DlibResNet()
    wanted = port.state_dict()
    missing = set(wanted) - set(state)
    if missing:
        raise ValueError(f"{path} lacks recognizer weights {sorted(missing)[:3]}...")
    port.load_state_dict({k: state[k] for k in wanted})
    return port
