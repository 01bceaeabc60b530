"""Edge cost per stage and frames per second, fp32 and int8, one face per frame.

Stages: YuNet detection, alignment, embedding of the original chip (for z), projector,
generator, paste-back, and the embedding of the virtual face that is sent.

Run: python benchmarks/edge_stages.py [--frames 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

from edge_agent.face.align import align, paste_back
from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import new_key
from edge_agent.recognizer import SystemRecognizer
from training.datasets import data_root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (0: all)")
    args = parser.parse_args()
    files = sorted((data_root() / "lfw").glob("*/*_0001.jpg"))[::60][: args.frames]
    images = [load_image(f) for f in files]
    detector, key = FaceDetector(), new_key()
    recognizer = SystemRecognizer(threads=args.threads)
    table = {}
    for precision in ("fp32", "int8"):
        anon = HpvfgAnonymizer(precision=precision, recognizer=recognizer, threads=args.threads)
        rot = anon.rotation(key)
        ms = defaultdict(list)
        for rep in range(2):  # the first pass warms up; the second is timed
            for image in images:
                t = [time.perf_counter()]
                face = detector.primary(image)
                t.append(time.perf_counter())
                aligned = align(image, face.landmarks, anon.spec)
                t.append(time.perf_counter())
                z = recognizer.embed_chips(aligned.chip[None])
                t.append(time.perf_counter())
                zv = anon._projector.run(None, {"z": z, "rotation": rot})[0]
                t.append(time.perf_counter())
                chip = aligned.chip[None].transpose(0, 3, 1, 2).astype(np.float32)
                out = anon._generator.run(None, {"chip": chip, "z": z, "z_virtual": zv})[0]
                virtual_chip = np.clip(np.rint(out[0]), 0, 255).astype(np.uint8).transpose(1, 2, 0)
                t.append(time.perf_counter())
                frame = paste_back(image, virtual_chip, aligned.matrix, anon.mask)
                t.append(time.perf_counter())
                recognizer.embed(frame, face.landmarks)
                t.append(time.perf_counter())
                if rep:
                    names = ("detect", "align", "embed original", "projector", "generator",
                             "paste back", "embed virtual")  # fmt: skip
                    for name, a, b in zip(names, t, t[1:], strict=False):
                        ms[name].append((b - a) * 1000)
        table[precision] = {k: float(np.median(v)) for k, v in ms.items()}
    w = sys.stdout.write
    w(f"{len(images)} LFW frames, median ms per frame, onnxruntime threads {args.threads}\n")
    w("| stage | fp32 | int8 |\n|---|---|---|\n")
    for stage in table["fp32"]:
        w(f"| {stage} | {table['fp32'][stage]:.2f} | {table['int8'][stage]:.2f} |\n")
    totals = {p: sum(v.values()) for p, v in table.items()}
    w(f"| **total** | {totals['fp32']:.1f} | {totals['int8']:.1f} |\n")
    w(f"| frames/s | {1000 / totals['fp32']:.1f} | {1000 / totals['int8']:.1f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
