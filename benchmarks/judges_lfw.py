"""Accuracy of the evaluation judges (dlib, SFace, FaceNet) on LFW pairs of the dev-only list.

Checks each judge's preprocessing against the figures of ../shared/models/judges/README.md
(SFace 99.37%, FaceNet 97.72%), and where each judge's "same person" threshold falls: the
cosine at a false-match rate of 1e-3 over every cross-identity pair of the images, and the
false-match rate of the judge's fixed rule (dlib 0.6, SFace 0.363, FaceNet 0.60).

Run: python benchmarks/judges_lfw.py --judges dlib,sface,facenet --pairs 600 [--out FILE.md]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.progress import progress
from training.datasets import data_root, identity_of, read_lfw_pairs
from training.evaluation import metrics
from training.evaluation.cache import default_cache_path, embed_cached
from training.evaluation.judges import Judge, locate, make_judges

log = logging.getLogger("judges_lfw")


def spread(pairs: list, limit: int | None) -> list:
    """Take ``limit`` pairs evenly across the list (it is sorted matched-first per fold)."""
    if not limit or limit >= len(pairs):
        return pairs
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).astype(int)]


def judge_rows(judge: Judge, emb: np.ndarray, index: dict, pairs: list, ids: np.ndarray) -> dict:
    """Return accuracy, AUC and threshold figures of one judge on ``pairs``."""
    a = emb[[index[p[0]] for p in pairs]]
    b = emb[[index[p[1]] for p in pairs]]
    s = judge.score(a, b)
    same = np.array([p[2] for p in pairs])
    acc, std = metrics.cross_validated_accuracy(s, same)
    cross = np.triu(ids[:, None] != ids[None, :], k=1)
    i, j = np.nonzero(cross)
    impostors = judge.score(emb[i], emb[j])
    thr = metrics.threshold_at_far(impostors, 1e-3)
    out = {
        "accuracy": f"{acc:.4f} ± {std:.4f}",
        "AUC": f"{metrics.auc(s[same], s[~same]):.5f}",
        f"threshold at FMR 1e-3 ({len(impostors)} cross pairs)": f"{judge.to_native(thr):.4f}",
        "TMR there": f"{metrics.accept_rate(s[same], thr):.4f}",
    }
    if judge.same_person_threshold is not None:
        fixed = judge.from_native(judge.same_person_threshold)
        out[f"fixed rule {judge.same_person_threshold}: FMR / TMR"] = (
            f"{metrics.accept_rate(impostors, fixed):.5f} / "
            f"{metrics.accept_rate(s[same], fixed):.4f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judges", default="sface,facenet", help="comma-separated judge specs")
    parser.add_argument("--pairs", type=int, default=600, help="pairs taken evenly (0: all)")
    parser.add_argument("--workers", type=int, default=1, help="processes for dlib")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    lfw = data_root() / "lfw"
    pairs = spread(read_lfw_pairs(data_root() / "splits" / "pairs_dev_only.txt"), args.pairs)
    paths = sorted({p for pr in pairs for p in pr[:2]})
    detector = FaceDetector()
    items = []
    for rel in progress(paths, desc="detect"):
        image = load_image(lfw / rel)
        items.append((image, locate(image, detector.primary(image))))
    index = {p: i for i, p in enumerate(paths)}
    ids = np.array([identity_of(p) for p in paths])
    lines = [
        f"{len(pairs)} pairs of `pairs_dev_only.txt` taken evenly, {len(paths)} images; "
        "accuracy is 10-fold cross-validated (threshold chosen on the other folds).",
        "",
    ]
    for judge in make_judges(args.judges, args.workers):
        emb = embed_cached(judge, [lfw / p for p in paths], items, default_cache_path())
        rows = judge_rows(judge, emb, index, pairs, ids)
        lines += [f"## {judge.name}", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows.items()] + [""]
    text = "\n".join(lines)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(f"# Judges on LFW pairs\n\nCommand: `{' '.join(sys.argv)}`\n\n{text}")


if __name__ == "__main__":
    main()
