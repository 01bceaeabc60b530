"""Edge cost of the HPVFG 2.0 renderer against the recognizer and 1.0.0's generator.

The renderer's cost does not depend on its weights, so untrained ones are exported for a
few sizes; every model runs as fp32 ONNX on one thread in the same process, and the table
gives each one's median time as a ratio to the system recognizer's.

Run: python benchmarks/render_cost.py [--runs 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edge_agent.assets import asset_path
from training.hpvfg2.model import RenderConfig, RenderGenerator
from training.onnx_export import export_onnx

# (working resolution, base channels, landmark heatmaps computed inside the graph)
SIZES = ((96, 32, False), (96, 16, False), (96, 16, True), (64, 16, True))


def median_ms(path: Path, feed: dict[str, np.ndarray], runs: int) -> float:
    """Median latency of one session on one thread, after three warm-up runs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: feed[i.name] for i in sess.get_inputs()}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (20)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 128)).astype(np.float32)
    feed = {"chip": rng.uniform(0, 255, (1, 3, 150, 150)).astype(np.float32), "z": z}
    feed["z_virtual"] = z
    rows = [
        ("system recognizer (dlib port)", asset_path("models/dlib_resnet_v1-port1.onnx")),
        ("1.0.0 generator", asset_path("models/hpvfg/generator.onnx")),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        example = {k: torch.from_numpy(v) for k, v in feed.items()}
        for work, base, marks in SIZES:
            path = Path(tmp) / f"render_{work}_{base}_{marks}.onnx"
            cfg = RenderConfig(work=work, base=base, landmarks=marks)
            export_onnx(RenderGenerator(cfg), example, ["virtual"], path)
            extra = " + landmark heatmaps" if marks else ""
            rows.append((f"2.0 renderer, W={work}, base {base}{extra}", path))
        times = [(name, median_ms(path, feed, args.runs)) for name, path in rows]
    baseline = times[0][1]
    sys.stdout.write("| model | ms per face | × recognizer |\n|---|---|---|\n")
    for name, ms in times:
        sys.stdout.write(f"| {name} | {ms:.1f} | {ms / baseline:.2f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
