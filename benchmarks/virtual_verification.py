"""VIRTUAL-space verification of the shipped model on the LFW dev triplets.

For each triplet (x1, x2, y) under one fresh key k: genuine R(G(x1,k)) vs R(G(x2,k)),
impostor R(G(x1,k)) vs R(G(y,k)), scored by the system recognizer at the bundle's
VIRTUAL threshold (what `kfaar serve` uses) and at the original-face threshold.

Run: python benchmarks/virtual_verification.py [--limit N] [--precision fp32|int8]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import new_key
from edge_agent.progress import progress
from edge_agent.recognizer import SAME_PERSON_THRESHOLD
from training.datasets import data_root, read_triplets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    args = parser.parse_args()
    root = data_root()
    triplets, _ = read_triplets(root / "splits" / "lfw_dev_triplets.txt", args.limit)
    anon, detector = HpvfgAnonymizer(precision=args.precision), FaceDetector()
    genuine, impostor = [], []
    for t in progress(triplets, desc="triplets"):
        key, e = new_key(), []
        for rel in (t.x1, t.x2, t.y):
            image = load_image(root / "lfw" / rel)
            face = detector.primary(image)
            e.append(anon.recognizer.embed(anon.anonymize(image, face, key), face.landmarks))
        genuine.append(e[0] @ e[1])
        impostor.append(e[0] @ e[2])
    g, i = np.array(genuine), np.array(impostor)
    virtual = anon.bundle.manifest["virtual_threshold"]
    lines = ["| threshold | genuine accepted | impostor accepted |", "|---|---|---|"]
    for name, thr in (("VIRTUAL (bundle)", virtual), ("original faces", SAME_PERSON_THRESHOLD)):
        lines.append(f"| {name} {thr} | {(g >= thr).mean():.3f} | {(i >= thr).mean():.3f} |")
    sys.stdout.write(f"{len(g)} triplets, {anon.name}\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
