"""Write a PNG grid of dev faces by category, originals beside their virtual faces.

Categories: frontal, turned heads (|yaw| > 25 degrees), open mouth, glasses, beard, dark
and light skin, young and old (training/evaluation/category_grid.py says how each is
picked). Commit one per shipped model version under docs/grids/, and look at it.

Run: python benchmarks/grid.py --anonymizer hpvfg --out docs/grids/hpvfg-1.0.0.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2

from edge_agent.face.detect import FaceDetector
from training.datasets import data_root, read_triplets
from training.evaluation.baselines import make_anonymizer
from training.evaluation.category_grid import measure, pick, read_hand_picked, render


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anonymizer", default="hpvfg", help="as kfaar eval --anonymizer")
    parser.add_argument("--root", type=Path, default=None, help="LFW folder (default: data)")
    parser.add_argument("--triplets", type=Path, default=None, help="dev triplets file")
    parser.add_argument("--hand-picked", type=Path, default=None, help="'category path' lines")
    parser.add_argument("--per-category", type=int, default=3, help="faces per row")
    parser.add_argument("--seed", type=int, default=2025, help="derive the keys from this")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = args.root or data_root() / "lfw"
    triplets = args.triplets or data_root() / "splits" / "lfw_dev_triplets.txt"
    if not root.is_dir() or not triplets.is_file():
        sys.stderr.write(f"grid: need --root folder and --triplets file ({root}, {triplets})\n")
        return 2
    if args.per_category < 1:
        sys.stderr.write("grid: --per-category must be at least 1\n")
        return 2
    ts, _ = read_triplets(triplets)
    rels = sorted({p for t in ts for p in (t.x1, t.x2, t.y)})
    traits = measure(rels, root, FaceDetector())
    chosen = pick(traits, read_hand_picked(args.hand_picked), args.per_category)
    anonymizer = make_anonymizer(args.anonymizer)
    grid = render(chosen, root, anonymizer, args.seed, args.per_category)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    for category, faces in chosen.items():
        sys.stdout.write(f"{category:<12} {', '.join(t.rel for t in faces)}\n")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
