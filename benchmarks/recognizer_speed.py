"""Time the system recognizer against dlib's own descriptor on the same chips, same run.

Run: python benchmarks/recognizer_speed.py [--faces 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.recognizer import SystemRecognizer
from training.datasets import data_root
from training.evaluation.judges import _dlib_models, dlib_chip, locate


def best_ms_per_face(fn: Callable[[], object], faces: int, repeat: int) -> float:
    """Return the best of ``repeat`` runs, in milliseconds per face."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000 / faces


def speed_table(rows: list[tuple[str, float]]) -> str:
    """Format (pipeline, ms/face) rows as Markdown, with speed-ups against the first row."""
    base = rows[0][1]
    width = max(len(r[0]) for r in rows)
    out = [
        f"| {'pipeline':<{width}} | ms/face | speed-up vs dlib |",
        f"|{'-' * (width + 2)}|---|---|",
    ]
    out += [f"| {name:<{width}} | {ms:.1f} | {base / ms:.2f}x |" for name, ms in rows]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    detector = FaceDetector()
    files = sorted((data_root() / "lfw").glob("*/*_0001.jpg"))[::50][: args.faces]
    chips = []
    for f in files:
        image = load_image(f)
        chips.append(dlib_chip(image, locate(image, detector.primary(image))))  # RGB
    bgr = np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2BGR) for c in chips])
    n = len(chips)
    facerec = _dlib_models()[2]

    rows = [
        (
            "dlib compute_face_descriptor, one by one",
            best_ms_per_face(
                lambda: [facerec.compute_face_descriptor(c) for c in chips], n, args.repeat
            ),
        )
    ]
    for threads in (1, 0):
        for flip in (False, True):
            system = SystemRecognizer(threads=threads, flip_average=flip)
            label = f"ONNX port{' + flip average' if flip else ''}, " + (
                "1 thread" if threads == 1 else "all cores"
            )
            rows.append(
                (
                    f"{label}, batch 1",
                    best_ms_per_face(
                        lambda s=system: [s.embed_chips(c[None]) for c in bgr], n, args.repeat
                    ),
                )
            )
            rows.append(
                (
                    f"{label}, batch 32",
                    best_ms_per_face(lambda s=system: s.embed_chips(bgr), n, args.repeat),
                )
            )
    sys.stdout.write(f"{n} LFW chips of 150x150, best of {args.repeat}\n{speed_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
