"""Read a frozen TensorFlow GraphDef without TensorFlow: the subset of its schema we need.

The messages are declared here as a descriptor (field numbers from TensorFlow's
``graph.proto``, ``node_def.proto``, ``attr_value.proto``, ``tensor.proto`` and
``tensor_shape.proto``), so protobuf parses the file and skips every field we leave out.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
# TensorFlow's DataType numbers for the dtypes a frozen inference graph holds.
TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_}


def _field(msg, name: str, number: int, kind: int, label: int = _F.LABEL_OPTIONAL, ref: str = ""):
    f = msg.field.add(name=name, number=number, type=kind, label=label)
    if ref:
        f.type_name = ref
    return f


def _file() -> descriptor_pb2.FileDescriptorProto:
    rep, msg_t = _F.LABEL_REPEATED, _F.TYPE_MESSAGE
    fd = descriptor_pb2.FileDescriptorProto(name="kfaar_tf_graph.proto", package="kfaar.tf")
    fd.syntax = "proto3"
    shape = fd.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    _field(dim, "size", 1, _F.TYPE_INT64)
    _field(shape, "dim", 2, msg_t, rep, ".kfaar.tf.TensorShapeProto.Dim")
    tensor = fd.message_type.add(name="TensorProto")
    _field(tensor, "dtype", 1, _F.TYPE_INT32)
    _field(tensor, "tensor_shape", 2, msg_t, ref=".kfaar.tf.TensorShapeProto")
    _field(tensor, "tensor_content", 4, _F.TYPE_BYTES)
    _field(tensor, "float_val", 5, _F.TYPE_FLOAT, rep).options.packed = True
    _field(tensor, "int_val", 7, _F.TYPE_INT32, rep).options.packed = True
    _field(tensor, "int64_val", 10, _F.TYPE_INT64, rep).options.packed = True
    attr = fd.message_type.add(name="AttrValue")
    lst = attr.nested_type.add(name="ListValue")
    _field(lst, "i", 3, _F.TYPE_INT64, rep).options.packed = True
    _field(attr, "list", 1, msg_t, ref=".kfaar.tf.AttrValue.ListValue")
    _field(attr, "s", 2, _F.TYPE_BYTES)
    _field(attr, "i", 3, _F.TYPE_INT64)
    _field(attr, "f", 4, _F.TYPE_FLOAT)
    _field(attr, "b", 5, _F.TYPE_BOOL)
    _field(attr, "shape", 7, msg_t, ref=".kfaar.tf.TensorShapeProto")
    _field(attr, "tensor", 8, msg_t, ref=".kfaar.tf.TensorProto")
    node = fd.message_type.add(name="NodeDef")
    entry = node.nested_type.add(name="AttrEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, msg_t, ref=".kfaar.tf.AttrValue")
    _field(node, "name", 1, _F.TYPE_STRING)
    _field(node, "op", 2, _F.TYPE_STRING)
    _field(node, "input", 3, _F.TYPE_STRING, rep)
    _field(node, "attr", 5, msg_t, rep, ".kfaar.tf.NodeDef.AttrEntry")
    graph = fd.message_type.add(name="GraphDef")
    _field(graph, "node", 1, msg_t, rep, ".kfaar.tf.NodeDef")
    return fd


@cache
def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    names = ("GraphDef", "NodeDef", "AttrValue", "TensorProto", "TensorShapeProto")
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"kfaar.tf.{n}"))
        for n in names
    }


def message(name: str):
    """Return a new, empty message of one of the declared types (GraphDef, NodeDef, ...)."""
    return _classes()[name]()


def read_graph(data: bytes):
    """Parse a serialized GraphDef."""
    graph = message("GraphDef")
    graph.ParseFromString(data)
    if not graph.node:
        raise ValueError("not a TensorFlow GraphDef: it has no nodes")
    return graph


def tensor_value(tensor) -> np.ndarray:
    """Return a TensorProto's value as a numpy array."""
    dtype = TF_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"unsupported TensorFlow dtype number {tensor.dtype}")
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape).copy()
    values = tensor.float_val or tensor.int_val or tensor.int64_val
    count = int(np.prod(shape)) if shape else 1
    # A repeated value field holds one value for a tensor filled with it.
    flat = np.array(values, dtype=dtype) if values else np.zeros(1, dtype)
    return np.resize(flat, count).reshape(shape)
