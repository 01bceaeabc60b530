"""Export the FER2013 mini-XCEPTION Keras weights to the ONNX model the evaluation harness ships."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from training.datasets import data_root
from training.measure.fer_model import load_keras_h5

log = logging.getLogger("build_fer_onnx")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_H5 = data_root().parent / "models" / "fer2013_mini_XCEPTION.102-0.66.hdf5"
DEFAULT_OUT = REPO / "training" / "assets" / "fer_mini_xception.onnx"


def export(h5: Path, out: Path, opset: int = 17) -> float:
    """Write the ONNX model and return its max abs difference from torch on random inputs."""
    model = load_keras_h5(h5)
    example = torch.zeros(2, 1, 64, 64)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(out),
        dynamo=False,
        opset_version=opset,
        input_names=["gray"],
        output_names=["probs"],
        dynamic_axes={"gray": {0: "batch"}, "probs": {0: "batch"}},
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(str(out)))
    # a smoke check on noise in the input's [-1, 1] range; the tests compare on real faces
    x = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"gray": x.numpy()})
    return float(np.abs(got - want).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--h5", type=Path, default=DEFAULT_H5, help="Keras HDF5 weights")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.h5.is_file():
        parser.error(f"weights not found: {args.h5}")
    diff = export(args.h5, args.out, args.opset)
    log.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)
    log.info("max abs difference torch vs onnxruntime on 5 noise inputs: %.3g", diff)
    if diff > 1e-4:
        raise SystemExit(f"ONNX output differs from torch by {diff:.3g} (> 1e-4)")


if __name__ == "__main__":
    main()
