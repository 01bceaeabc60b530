"""Parity and LFW accuracy of the system recognizer (the ONNX port of dlib's ResNet).

Compares, on the LFW pairs whose identities are not held back:
- dlib itself: its 5-point alignment and ``compute_face_descriptor`` (the reference);
- the ONNX port on dlib's own chips (tests the port);
- the ONNX port on chips aligned from YuNet's landmarks (the edge pipeline).

It also calibrates the system's operating thresholds at FMR 1e-3 and 1e-4 on the
cross-identity pairs of the pairsDevTrain images.

Run: python benchmarks/recognizer_accuracy.py [--limit N]
"""

from __future__ import annotations

import argparse
import logging
import sys

import cv2
import numpy as np

from edge_agent.face.align import DLIB_150, align
from edge_agent.face.detect import FaceDetector
from edge_agent.progress import progress
from edge_agent.recognizer import SystemRecognizer, l2_normalize
from training.datasets import data_root, identity_of, read_lfw_pairs
from training.evaluation import metrics
from training.evaluation.cache import default_cache_path, embed_cached
from training.evaluation.judges import DlibJudge, dlib_chip, locate

log = logging.getLogger("recognizer_accuracy")


def embed_all(paths: list[str], judge: DlibJudge) -> dict:
    """Embed every image with dlib and with the port, on dlib's chips and on YuNet's."""
    detector = FaceDetector()
    lfw = data_root() / "lfw"
    images, refs, dlib_chips, yunet_chips = [], [], [], []
    for rel in progress(paths, desc="detect+align"):
        image = cv2.imread(str(lfw / rel))
        ref = locate(image, detector.primary(image))
        images.append(image)
        refs.append(ref)
        dlib_chips.append(cv2.cvtColor(dlib_chip(image, ref), cv2.COLOR_RGB2BGR))
        yunet_chips.append(align(image, ref.face.landmarks, DLIB_150).chip)
    files = [lfw / p for p in paths]
    out = {
        "paths": {p: i for i, p in enumerate(paths)},
        "dlib": embed_cached(
            judge, files, list(zip(images, refs, strict=True)), default_cache_path()
        ),
        "hog_found": sum(r.dlib_detected for r in refs),
    }
    for flip in (False, True):
        system = SystemRecognizer(flip_average=flip)
        suffix = "_flip" if flip else ""
        out["port_dlib_chip" + suffix] = system.embed_chips(np.stack(dlib_chips))
        out["port_yunet_chip" + suffix] = system.embed_chips(np.stack(yunet_chips))
    return out


def pair_scores(emb: dict, key: str, pairs: list, metric: str) -> np.ndarray:
    idx = emb["paths"]
    a = emb[key][[idx[p[0]] for p in pairs]]
    b = emb[key][[idx[p[1]] for p in pairs]]
    if metric == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    a, b = l2_normalize(a), l2_normalize(b)
    return (a * b).sum(1)


def cross_identity_scores(emb: dict, key: str, pairs: list) -> np.ndarray:
    """Score every pair of distinct people among the images of ``pairs``."""
    paths = sorted({p for pr in pairs for p in pr[:2]})
    e = emb[key][[emb["paths"][p] for p in paths]]
    ids = np.array([identity_of(p) for p in paths])
    # One similarity matrix and a mask: materialising index pairs would take gigabytes.
    upper_cross = np.triu(ids[:, None] != ids[None, :], k=1)
    return (e @ e.T)[upper_cross]


def spread(pairs: list, limit: int | None) -> list:
    """Take ``limit`` pairs evenly across the list, which is sorted matched-first per fold."""
    if not limit or limit >= len(pairs):
        return pairs
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).astype(int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    parser.add_argument("--workers", type=int, default=None, help="processes for dlib")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    splits = data_root() / "splits"
    test_pairs = spread(read_lfw_pairs(splits / "pairs_dev_only.txt"), args.limit)
    calib_pairs = spread(read_lfw_pairs(splits / "pairsDevTrain_dev_only.txt"), args.limit)
    paths = sorted({p for pr in test_pairs + calib_pairs for p in pr[:2]})
    log.info(
        "%d test pairs, %d calibration pairs, %d images",
        len(test_pairs),
        len(calib_pairs),
        len(paths),
    )
    emb = embed_all(paths, DlibJudge(args.workers))

    ref = l2_normalize(emb["dlib"])
    cos = (ref * emb["port_dlib_chip"]).sum(1)
    cos_pipe = (ref * emb["port_yunet_chip"]).sum(1)
    rows = [
        ("images", f"{len(paths)} (dlib HOG found {emb['hog_found']})"),
        ("parity: cosine(port, dlib) on dlib chips, mean", f"{cos.mean():.6f}"),
        ("parity: min / share >= 0.999", f"{cos.min():.6f} / {(cos >= 0.999).mean():.4f}"),
        (
            "cosine(port on YuNet chips, dlib), mean / p5",
            f"{cos_pipe.mean():.4f} / {np.percentile(cos_pipe, 5):.4f}",
        ),
    ]
    same = np.array([p[2] for p in test_pairs])
    for label, key, metric in [
        ("dlib (reference)", "dlib", "euclidean"),
        ("port, dlib chips", "port_dlib_chip", "cosine"),
        ("port, YuNet chips", "port_yunet_chip", "cosine"),
        ("port + flip average, dlib chips", "port_dlib_chip_flip", "cosine"),
        ("port + flip average, YuNet chips (edge default)", "port_yunet_chip_flip", "cosine"),
    ]:
        s = pair_scores(emb, key, test_pairs, metric)
        mean, std = metrics.cross_validated_accuracy(s, same)
        rows.append((f"accuracy 10-fold, {label}", f"{mean:.4f} ± {std:.4f}"))
        if metric == "euclidean":
            rows.append(
                (f"accuracy at distance 0.6, {label}", f"{((s >= -0.6) == same).mean():.4f}")
            )
        rows.append((f"AUC, {label}", f"{metrics.auc(s[same], s[~same]):.5f}"))

    # Operating thresholds from every cross-identity pair of the calibration images
    # (millions, so FMR 1e-4 is resolvable), checked on the test images' cross pairs.
    key = "port_yunet_chip_flip"
    calib_imp = cross_identity_scores(emb, key, calib_pairs)
    test_imp = cross_identity_scores(emb, key, test_pairs)
    genuine = pair_scores(emb, key, test_pairs, "cosine")[same]
    for far in (1e-3, 1e-4):
        thr = metrics.threshold_at_far(calib_imp, far)
        rows.append(
            (f"edge default: threshold at FMR {far:g} ({len(calib_imp)} pairs)", f"{thr:.4f}")
        )
        rows.append(
            (
                f"  on pairs_dev_only images: FMR ({len(test_imp)} pairs) / TMR",
                f"{metrics.accept_rate(test_imp, thr):.5f} / "
                f"{metrics.accept_rate(genuine, thr):.4f}",
            )
        )
    width = max(len(r[0]) for r in rows)
    sys.stdout.write("\n".join(f"| {k:<{width}} | {v} |" for k, v in rows) + "\n")


if __name__ == "__main__":
    main()
