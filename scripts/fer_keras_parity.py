"""Compare the shipped FER ONNX model with Keras itself on real LFW face crops.

Not run in CI: it needs Keras, which the project does not depend on. Reproduce in a throwaway
virtualenv outside the checkout (docs/measurements/fer_parity.md has the measured numbers):

    python3 -m venv /tmp/keras-venv
    /tmp/keras-venv/bin/pip install keras torch==2.13.0 h5py numpy onnxruntime \\
        opencv-python-headless
    KERAS_BACKEND=torch PYTHONPATH=. /tmp/keras-venv/bin/python scripts/fer_keras_parity.py

Keras 3 reads the legacy Keras 2 HDF5 directly (keras.models.load_model, compile=False).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from training.datasets import data_root
from training.measure.expression import CLASSES, ExpressionClassifier, preprocess

log = logging.getLogger("fer_keras_parity")
DEFAULT_H5 = data_root().parent / "models" / "fer2013_mini_XCEPTION.102-0.66.hdf5"
FACE_BOX = (60, 60, 130, 130)  # LFW 250x250 images are roughly centred on the face


def lfw_faces(lfw: Path, n: int) -> list[Path]:
    """Return the first image of n people spread evenly over the sorted LFW identities."""
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    step = max(len(people) // n, 1)
    return [min(p.glob("*.jpg")) for p in people[::step][:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--h5", type=Path, default=DEFAULT_H5, help="Keras HDF5 weights")
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX model (default: packaged)")
    parser.add_argument("--lfw", type=Path, default=data_root() / "lfw", help="LFW folder")
    parser.add_argument("-n", type=int, default=200, help="number of faces (one per person)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import keras  # imported here so --help works without Keras

    paths = lfw_faces(args.lfw, args.n)
    x = np.stack([preprocess(cv2.imread(str(p)), FACE_BOX) for p in paths])  # (N, 1, 64, 64)
    model = keras.models.load_model(args.h5, compile=False)
    want = np.asarray(model.predict(x.transpose(0, 2, 3, 1), verbose=0))  # Keras is NHWC
    got = ExpressionClassifier(args.onnx).run(x)

    diff = np.abs(got - want)
    agree = got.argmax(1) == want.argmax(1)
    log.info("keras %s, backend %s", keras.__version__, os.environ.get("KERAS_BACKEND", "?"))
    log.info("faces: %d LFW images, box %s", len(paths), FACE_BOX)
    log.info("max abs prob diff %.3g, mean %.3g", diff.max(), diff.mean())
    log.info("argmax agreement %d/%d", agree.sum(), len(agree))
    log.info("Keras classes: %s", dict(Counter(CLASSES[i] for i in want.argmax(1))))
    try:
        import torch

        from training.measure.fer_model import load_keras_h5
    except ImportError:
        return
    with torch.no_grad():
        ours = load_keras_h5(args.h5)(torch.from_numpy(x)).numpy()
    log.info("torch port vs Keras: max abs prob diff %.3g", np.abs(ours - want).max())
    log.info("torch port vs ONNX: max abs prob diff %.3g", np.abs(ours - got).max())


if __name__ == "__main__":
    main()
