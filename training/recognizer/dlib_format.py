"""Read dlib's portable serialization of a DNN (the ``.dat`` files of dlib's models).

dlib writes a network from the loss layer inwards: each wrapper layer first writes its
version, then recurses into its sub-network, then writes its own details. So the file
holds a run of versions, the input layer, and then each computational layer's details
in input-to-output order. Tag and skip layers write only a version and are invisible
here; the architecture around them is known from dlib's example program.

Encodings (dlib/serialize.h, dlib/cuda/tensor.h):
- integer: one header byte (bit 7 = sign, low bits = byte count), then little-endian bytes
- float scalar: two integers, mantissa ``m`` and exponent ``e``, value ``m * 2**e``
- string: an integer length, then the bytes
- bool: one ASCII byte, ``'0'`` or ``'1'``
- tensor: version 2, then num_samples, k, nr, nc, then raw little-endian float32 values
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class DlibFormatError(ValueError):
    """Raised when a file does not follow dlib's DNN serialization."""


@dataclass
class Layer:
    """One computational layer's details, as stored in the file."""

    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"
    params: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed network: input normalisation, layers in order, and loss settings."""

    input_size: int
    input_mean_rgb: tuple[float, float, float]
    layers: list[Layer]
    loss: dict


def find_model_file(name: str = MODEL_FILE) -> Path:
    """Locate a model file of the ``face-recognition-models`` package without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package 'face-recognition-models' is not installed; install kfaar[eval]"
        )
    path = Path(spec.origin).parent / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in {path.parent}")
    return path


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        header = self._take(1)[0]
        size = header & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer header 0x{header:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if header & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return float(mantissa) * 2.0**exponent

    def string(self) -> str:
        n = self.int()
        if not 0 <= n < 256:
            raise DlibFormatError(f"implausible string length {n} at byte {self.pos}")
        return self._take(n).decode("ascii")

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"unsupported tensor version {version} at byte {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4")
        return values.reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"unsupported alias_tensor version {version}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _read_details(r: _Reader, tag: str) -> Layer:
    if tag in ("con_4", "con_5"):
        params = r.tensor().ravel()
        num_filters, nr, nc = r.int(), r.int(), r.int()
        stride = (r.int(), r.int())
        padding = (r.int(), r.int())
        w_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        use_bias = r.bool() if tag == "con_5" else True
        n_w = int(np.prod(w_shape))
        weight = params[:n_w].reshape(w_shape)
        if weight.shape[0] != num_filters or (weight.shape[2], weight.shape[3]) != (nr, nc):
            raise DlibFormatError(f"conv filter shape {weight.shape} disagrees with header")
        arrays = {"weight": weight}
        if use_bias:
            arrays["bias"] = params[n_w : n_w + int(np.prod(b_shape))]
        return Layer("con", {"stride": stride, "padding": padding}, arrays)
    if tag == "affine_":
        params = r.tensor().ravel()
        g_shape = r.alias_tensor()
        r.alias_tensor()
        mode = r.int()
        n = int(np.prod(g_shape))
        arrays = {"gamma": params[:n], "beta": params[n : 2 * n]}
        return Layer("affine", {"mode": mode}, arrays)
    if tag == "relu_":
        return Layer("relu")
    if tag == "add_prev_":
        return Layer("add_prev")
    if tag in ("max_pool_2", "avg_pool_2"):
        size = (r.int(), r.int())
        stride = (r.int(), r.int())
        padding = (r.int(), r.int())
        kind = "max_pool" if tag.startswith("max") else "avg_pool"
        return Layer(kind, {"size": size, "stride": stride, "padding": padding})
    if tag == "fc_2":
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor().ravel()
        r.alias_tensor()
        r.alias_tensor()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        # dlib multiplies input rows by a (num_inputs x num_outputs) matrix.
        weight = params[: num_inputs * num_outputs].reshape(num_inputs, num_outputs)
        arrays = {"weight": weight}
        if bias_mode == 0:
            arrays["bias"] = params[num_inputs * num_outputs :]
        return Layer("fc", {"num_outputs": num_outputs}, arrays)
    raise DlibFormatError(f"unsupported layer tag {tag!r}")


def parse(data: bytes) -> DlibNet:
    """Parse dlib's metric-learning ResNet from the bytes of its ``.dat`` file."""
    r = _Reader(data)
    r.int()  # loss layer version
    loss_tag = r.string()
    if loss_tag != "loss_metric_2":
        raise DlibFormatError(f"expected loss_metric_2, found {loss_tag!r}")
    loss = {"margin": r.float(), "distance_threshold": r.float()}

    # Versions of the nested wrapper layers, up to the input layer's name.
    marker = b"input_rgb_image_sized"
    start = data.find(marker, r.pos)
    if start < 0:
        raise DlibFormatError("no input_rgb_image_sized layer found")
    r.pos = start - 2  # the length integer is one header byte plus one byte
    if r.string() != marker.decode():
        raise DlibFormatError("input layer name is not where expected")
    mean_rgb = (r.float(), r.float(), r.float())
    nr, nc = r.int(), r.int()
    if nr != nc:
        raise DlibFormatError(f"non-square input {nr}x{nc}")

    layers: list[Layer] = []
    while r.pos < len(data):
        layers.append(_read_details(r, r.string()))
        for _ in range(3):  # setup flags of the wrapping add_layer
            r.bool()
        for _ in range(3):  # x_grad, cached_output, params_grad
            r.tensor()
        if len(layers) == 1:
            r.int()  # the layer over the input also stores its sample expansion factor
    log.debug("parsed %d dlib layers", len(layers))
    return DlibNet(nr, mean_rgb, layers, loss)


def load(path: Path | None = None) -> DlibNet:
    """Parse the dlib face recognition model, by default from ``face-recognition-models``."""
    path = path or find_model_file()
    return parse(Path(path).read_bytes())
