"""The frozen-graph converter that runs FaceNet on onnxruntime, against a torch reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from training.evaluation.tf_graph import message
from training.evaluation.tf_to_onnx import convert_frozen_graph

rng = np.random.default_rng(7)


def _const(graph, name: str, value: np.ndarray) -> None:
    node = graph.node.add(name=name, op="Const")
    t = node.attr["value"].tensor
    t.dtype = {np.dtype(np.float32): 1, np.dtype(np.int32): 3}[value.dtype]
    for d in value.shape:
        t.tensor_shape.dim.add(size=d)
    t.tensor_content = value.tobytes()


def _node(graph, name: str, op: str, *inputs: str, **attrs) -> None:
    node = graph.node.add(name=name, op=op)
    node.input.extend(inputs)
    for key, val in attrs.items():
        if isinstance(val, bytes):
            node.attr[key].s = val
        elif isinstance(val, bool):
            node.attr[key].b = val
        elif isinstance(val, float):
            node.attr[key].f = val
        else:
            node.attr[key].list.i.extend(val)


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _graph():
    g = message("GraphDef")
    ph = g.node.add(name="input", op="Placeholder")
    for d in (1, 11, 11, 3):
        ph.attr["shape"].shape.dim.add(size=d)
    w = {
        "w1": rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
        "b1": rng.standard_normal(8).astype(np.float32),
        "w2": rng.standard_normal((1, 1, 8, 4)).astype(np.float32),
        "w3": rng.standard_normal((2, 2, 8, 4)).astype(np.float32),
        "scale": np.array(0.17, np.float32),
        "mm": rng.standard_normal((8 * 9, 5)).astype(np.float32),
        "gamma": np.abs(rng.standard_normal(5)).astype(np.float32),
        "beta": rng.standard_normal(5).astype(np.float32),
        "mean": rng.standard_normal(5).astype(np.float32),
        "var": np.abs(rng.standard_normal(5)).astype(np.float32) + 0.5,
    }
    for k, v in w.items():
        _const(g, k, v)
    _const(g, "axis", np.array(3, np.int32))
    _const(g, "flat", np.array([1, -1], np.int32))
    _const(g, "to4", np.array([1, 1, 1, 5], np.int32))
    _const(g, "to2", np.array([1, 5], np.int32))
    _const(g, "red", np.array([1], np.int32))
    _const(g, "tiny", np.array(1e-10, np.float32))
    conv = {"strides": [1, 2, 2, 1], "padding": b"SAME", "data_format": b"NHWC"}
    _node(g, "c1", "Conv2D", "input:0", "w1", **conv)
    _node(g, "b1a", "BiasAdd", "c1", "b1")
    _node(g, "r1", "Relu", "b1a")  # (1, 6, 6, 8)
    _node(g, "c2", "Conv2D", "r1", "w2", strides=[1, 1, 1, 1], padding=b"VALID")
    _node(g, "c3", "Conv2D", "r1", "w3", strides=[1, 1, 1, 1], padding=b"SAME")
    _node(g, "cat", "ConcatV2", "c2", "c3", "axis")  # (1, 6, 6, 8)
    _node(g, "mul", "Mul", "scale", "cat")
    _node(g, "add", "Add", "r1", "mul")
    pool = {"ksize": [1, 3, 3, 1], "strides": [1, 2, 2, 1], "data_format": b"NHWC"}
    _node(g, "mp", "MaxPool", "add", padding=b"SAME", **pool)  # (1, 3, 3, 8)
    _node(g, "ap", "AvgPool", "mp", padding=b"SAME", **pool | {"strides": [1, 1, 1, 1]})
    _node(g, "flat_r", "Reshape", "ap", "flat")
    _node(g, "mm_r", "MatMul", "flat_r", "mm", transpose_a=False, transpose_b=False)
    _node(g, "bn_in", "Reshape", "mm_r", "to4")
    _node(
        g,
        "bn",
        "FusedBatchNorm",
        "bn_in",
        "gamma",
        "beta",
        "mean",
        "var",
        epsilon=1e-3,
        is_training=False,
        data_format=b"NHWC",
    )
    _node(g, "bn_out", "Reshape", "bn", "to2")
    _node(g, "sq", "Square", "bn_out")
    _node(g, "sum", "Sum", "sq", "red", keep_dims=True)
    _node(g, "max", "Maximum", "sum", "tiny")
    _node(g, "rs", "Rsqrt", "max")
    _node(g, "embeddings", "Mul", "bn_out", "rs")
    return g, w


def _reference(x: np.ndarray, w: dict) -> np.ndarray:
    """Compute the same network in torch, padding as TensorFlow's SAME does."""
    t = torch.from_numpy(x)  # NCHW

    def conv(t, k, stride):
        kern = torch.from_numpy(k).permute(3, 2, 0, 1)
        ph = _same_pad(t.shape[2], k.shape[0], stride)
        pw = _same_pad(t.shape[3], k.shape[1], stride)
        return F.conv2d(F.pad(t, (*pw, *ph)), kern, stride=stride)

    r1 = F.relu(conv(t, w["w1"], 2) + torch.from_numpy(w["b1"]).view(1, -1, 1, 1))
    c2 = F.conv2d(r1, torch.from_numpy(w["w2"]).permute(3, 2, 0, 1))
    cat = torch.cat([c2, conv(r1, w["w3"], 1)], 1)
    add = r1 + 0.17 * cat
    ph = _same_pad(add.shape[2], 3, 2)
    mp = F.max_pool2d(F.pad(add, (*ph, *ph), value=-np.inf), 3, 2)
    # TensorFlow's SAME average counts only real pixels: divide by the count of them.
    ones = F.avg_pool2d(F.pad(torch.ones_like(mp), (1, 1, 1, 1)), 3, 1)
    ap = F.avg_pool2d(F.pad(mp, (1, 1, 1, 1)), 3, 1) / ones
    flat = ap.permute(0, 2, 3, 1).reshape(ap.shape[0], -1)  # TensorFlow's NHWC order
    mm = flat @ torch.from_numpy(w["mm"])
    g, b, m, v = (torch.from_numpy(w[k]) for k in ("gamma", "beta", "mean", "var"))
    bn = (mm - m) / torch.sqrt(v + 1e-3) * g + b
    return F.normalize(bn, dim=1).numpy()


def test_converted_graph_matches_a_torch_reference_of_the_same_ops() -> None:
    graph, weights = _graph()
    model = convert_frozen_graph(graph.SerializeToString(), "embeddings")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 3, 11, 11)).astype(np.float32)  # batch 3: not the frozen 1
    got = session.run(None, {"input": x})[0]
    want = _reference(x, weights)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_unknown_ops_and_bad_files_are_refused_by_name() -> None:
    graph, _ = _graph()
    graph.node.add(name="odd", op="Softplus").input.append("embeddings")
    with pytest.raises(ValueError, match="Softplus"):
        convert_frozen_graph(graph.SerializeToString(), "odd")
    with pytest.raises(ValueError, match="no node named"):
        convert_frozen_graph(graph.SerializeToString(), "nope")
    with pytest.raises(ValueError, match="no nodes"):
        convert_frozen_graph(b"", "embeddings")
