"""Export the two published MiniFASNet checkpoints as one ONNX graph, fp32 and int8.

    python -m training.liveness.export --weights DIR --commit SHA [--out DIR]

``DIR`` holds ``2.7_80x80_MiniFASNetV2.pth`` and ``4_0_0_80x80_MiniFASNetV1SE.pth`` from
github.com/minivision-ai/Silent-Face-Anti-Spoofing (``resources/anti_spoof_models``,
Apache-2.0). The graph takes ``crop0`` (scale 2.7) and ``crop1`` (scale 4.0), each
(N, 3, 80, 80) BGR 0..255, and returns ``probs`` (N, 2, 3): each model's softmax.
The threshold written to the manifest is the 5th percentile of the live scores of 500
LFW training-split photos (BPCER 5% on web photos, which are not live captures; 2% there
is a score near 0.03, which stops few attacks: docs/LIVENESS.md), disjoint from the dev
photos measured there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.liveness.pad import MANIFEST, crops
from training.liveness.minifasnet import MiniFASNet
from training.onnx_export import export_onnx

log = logging.getLogger(__name__)

REPO = "https://github.com/minivision-ai/Silent-Face-Anti-Spoofing"
CHECKPOINTS = (("2.7_80x80_MiniFASNetV2.pth", 2.7), ("4_0_0_80x80_MiniFASNetV1SE.pth", 4.0))
VERSION = "1.0.0"
TARGET_BPCER = 0.05


class Pair(nn.Module):
    """Both networks behind one graph: softmax per model, stacked (N, 2, 3)."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, crop0: torch.Tensor, crop1: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.a(crop0).softmax(1), self.b(crop1).softmax(1)], 1)


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lfw_crops(root: Path, split: Path, n: int, seed: int = 0) -> np.ndarray:
    """Return crops (n, 2, 3, 80, 80) of ``n`` photos named in a triplet/pair split file."""
    names = sorted({t for line in split.read_text().split("\n") for t in line.split()[:1]})
    random.Random(seed).shuffle(names)
    det, out = FaceDetector(), []
    scales = tuple(s for _, s in CHECKPOINTS)
    for name in names:
        path = root / name
        if not path.is_file():
            continue
        image = load_image(path)
        try:
            out.append(np.stack(crops(image, det.primary(image), scales)))
        except NoFaceError:
            continue
        if len(out) == n:
            break
    return np.stack(out)


def live_scores(path: Path, batch: np.ndarray) -> np.ndarray:
    """Live scores (N,) of ``batch`` under the ONNX graph at ``path``."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = s.run(["probs"], {"crop0": batch[:, 0], "crop1": batch[:, 1]})[0]
    return probs[:, :, 1].mean(1)


def export(weights: Path, commit: str, out: Path, lfw: Path, split: Path) -> dict:
    """Write liveness.onnx, liveness.int8.onnx and the manifest into ``out``."""
    nets = [MiniFASNet.from_state_dict(torch.load(weights / f, map_location="cpu"))
            for f, _ in CHECKPOINTS]  # fmt: skip
    pair = Pair(*nets).eval()
    x = torch.zeros(1, 3, 80, 80)
    fp32 = export_onnx(pair, {"crop0": x, "crop1": x}, ["probs"], out / "liveness.onnx")
    calib = lfw_crops(lfw, split, 600)  # (600, 2, 3, 80, 80) bona fide photos
    with torch.no_grad():
        ref = pair(torch.from_numpy(calib[:, 0]), torch.from_numpy(calib[:, 1]))[:, :, 1].mean(1)
    parity = float(np.abs(ref.numpy() - live_scores(fp32, calib)).max())
    pre = out / "liveness.pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    feeds = [{"crop0": calib[i : i + 1, 0], "crop1": calib[i : i + 1, 1]} for i in range(100)]
    int8 = out / "liveness.int8.onnx"
    quantize_static(str(pre), str(int8), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)  # fmt: skip
    pre.unlink()
    held = calib[100:]  # 500 for the threshold: photos quantization did not see
    s32, s8 = live_scores(fp32, held), live_scores(int8, held)
    manifest = {
        "name": "minifasnet-pair",
        "version": VERSION,
        "source": {
            "repo": REPO,
            "commit": commit,
            "license": "Apache-2.0",
            "files": {
                f"resources/anti_spoof_models/{f}": _sha256(weights / f) for f, _ in CHECKPOINTS
            },
        },
        "scales": [s for _, s in CHECKPOINTS],
        "input": "BGR 0..255, 80x80 crop around the detection box, no normalisation",
        "live_class": 1,
        "threshold": round(float(np.quantile(s32, TARGET_BPCER)), 4),
        "threshold_rule": f"BPCER {TARGET_BPCER:.0%} on {len(held)} LFW training-split photos",
        "torch_onnx_max_abs_diff": parity,
        "int8_vs_fp32_max_abs_diff": float(np.abs(s32 - s8).max()),
        "files": {
            "fp32": {"name": fp32.name, "sha256": _sha256(fp32)},
            "int8": {"name": int8.name, "sha256": _sha256(int8)},
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="folder with the two .pth files")
    p.add_argument("--commit", required=True, help="the source repository's commit")
    p.add_argument("--out", type=Path, default=Path("edge_agent/assets/models/liveness"))
    p.add_argument("--lfw", type=Path, default=Path("/work/shared/data/lfw"))
    p.add_argument("--split", type=Path,
                   default=Path("/work/shared/data/splits/lfw_train_triplets.txt"))  # fmt: skip
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(export(a.weights, a.commit, a.out, a.lfw, a.split), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
