"""Passive PAD: time per frame against the recognizer, and ISO/IEC 30107-3 error rates.

Timing: MiniFASNet pair (fp32, int8) per frame, crops included, beside the system
recognizer's embedding of the same faces, one onnxruntime thread, same run.
Errors at the shipped threshold (and at BPCER 2% on the dev photos):
- bona fide: the bundled sample faces, LFW dev-split photos, MiniFASNet's live sample;
- real attacks: MiniFASNet's sample images (pass ``--minifasnet DIR`` with image_F1.jpg,
  image_F2.jpg, image_T1.jpg from github.com/minivision-ai/Silent-Face-Anti-Spoofing);
- simulated attacks (labelled so): print and screen made from LFW dev photos, scored per
  frame and per attempt (three frames, scores fused as the edge does).

Run: python benchmarks/liveness.py [--photos 200] [--minifasnet DIR] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.assets import asset_path
from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.liveness.attacks import KINDS, simulate
from edge_agent.liveness.pad import PassiveLiveness, fuse_scores
from edge_agent.recognizer import SystemRecognizer
from training.datasets import data_root


def dev_photos(n: int) -> list[Path]:
    """The first photo named on each line of the LFW dev triplets, ``n`` distinct ones."""
    root = data_root() / "lfw"
    lines = (data_root() / "splits" / "lfw_dev_triplets.txt").read_text().split("\n")
    names = list(dict.fromkeys(t for line in lines for t in line.split()[:1]))
    return [root / name for name in names[:n]]


def timing(images, detector, pads, recognizer) -> dict:
    """Median ms per frame for each PAD precision and for the recognizer, same faces."""
    faces = [detector.primary(im) for im in images]
    out = {}
    for name, fn in [
        ("recognizer (embed)", lambda im, f: recognizer.embed(im, f.landmarks)),
        *[(f"PAD {p}", lambda im, f, pad=pad: pad.score(im, f)) for p, pad in pads.items()],
    ]:
        ms = []
        for rep in range(2):  # warm-up pass, then the timed one
            for im, f in zip(images, faces, strict=True):
                t = time.perf_counter()
                fn(im, f)
                if rep:
                    ms.append((time.perf_counter() - t) * 1000)
        out[name] = float(np.median(ms))
    return out


def score_all(frames, detector, pad) -> list[float | None]:
    """Live score per frame; None where no face is found (counted as refused)."""
    out = []
    for fr in frames:
        try:
            out.append(pad.score(fr, detector.primary(fr)))
        except NoFaceError:
            out.append(None)
    return out


def rate(scores, threshold: float, attack: bool) -> tuple[int, int]:
    """(errors, count): attacks accepted as live, or bona fide refused."""
    if attack:  # an attack with no face found is not accepted
        return sum(s is not None and s >= threshold for s in scores), len(scores)
    return sum(s is None or s < threshold for s in scores), len(scores)


SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sweep(scores: dict[str, list], fused: dict[str, list[float]], ths) -> list[dict]:
    """Error rates of every set at each threshold: the trade-off, not one point."""
    out = []
    for th in ths:
        row = {"threshold": th}
        for name, s in scores.items():
            row[name] = rate(s, th, name.startswith("attack"))
        for kind, f in fused.items():
            row[f"attack: {kind} (simulated, 3-frame attempts)"] = rate(f, th, True)
        out.append(row)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=200, help="LFW dev photos (bona fide)")
    p.add_argument("--minifasnet", type=Path, default=None, help="their sample images")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    a = p.parse_args()
    det, rng = FaceDetector(), np.random.default_rng(2026)
    pads = {"fp32": PassiveLiveness("fp32"), "int8": PassiveLiveness("int8")}
    samples = [load_image(f) for f in sorted(asset_path("sample_faces").glob("*/*.jpg"))]
    lfw = [load_image(f) for f in dev_photos(a.photos)]
    ms = timing(samples + lfw[:24], det, pads, SystemRecognizer(threads=1))
    sets: dict[str, tuple[bool, list]] = {
        "bona fide: sample faces": (False, samples),
        "bona fide: LFW dev photos": (False, lfw),
    }
    if a.minifasnet:  # EXIF-rotated phone shots: cv2.imread applies the orientation
        real = {k: cv2.imread(str(a.minifasnet / f"image_{k}.jpg")) for k in ("F1", "F2", "T1")}
        sets["bona fide: MiniFASNet live sample (real)"] = (False, [real["T1"]])
        sets["attack: MiniFASNet spoof samples (real)"] = (True, [real["F1"], real["F2"]])
    attempts = {}
    for kind in KINDS:
        frames = [[simulate(kind, im, rng) for _ in range(3)] for im in lfw]
        sets[f"attack: {kind} (simulated)"] = (True, [f[0] for f in frames])
        attempts[kind] = frames
    res = {"ms_per_frame": ms, "rows": {}}
    attempts_fused: dict[str, dict[str, list[float]]] = {p: {} for p in pads}
    for prec, pad in pads.items():
        scores = {name: score_all(frames, det, pad) for name, (_, frames) in sets.items()}
        bona = [s if s is not None else 0.0 for n, v in scores.items() if n.startswith("bona")
                for s in v]  # fmt: skip
        dev_bona = [s if s is not None else 0.0 for s in scores["bona fide: LFW dev photos"]]
        at2 = float(np.quantile(dev_bona, 0.02))
        for name, (attack, _) in sets.items():
            row = {}
            for label, th in (("shipped", pad.threshold), ("bpcer2_dev", at2)):
                err, n = rate(scores[name], th, attack)
                row[label] = [err, n]
            res["rows"][f"{prec} | {name} (per frame)"] = row
        for kind, frames in attempts.items():  # three frames per attempt, fused
            fused = [fuse_scores([s or 0.0 for s in score_all(f, det, pad)]) for f in frames]
            row = {lab: list(rate(fused, th, True))
                   for lab, th in (("shipped", pad.threshold), ("bpcer2_dev", at2))}  # fmt: skip
            res["rows"][f"{prec} | attack: {kind} (simulated, 3-frame attempts)"] = row
            attempts_fused[prec][kind] = fused
        res[f"{prec}_thresholds"] = {"shipped": pad.threshold, "bpcer2_dev": round(at2, 4)}
        res[f"{prec}_scores"] = scores
        res[f"{prec}_sweep"] = sweep(scores, attempts_fused[prec], SWEEP)
        res[f"{prec}_bona_fide_n"] = len(bona)
    w = sys.stdout.write
    rec = ms["recognizer (embed)"]
    w("| stage | ms per frame | x recognizer |\n|---|---|---|\n")
    for k, v in ms.items():
        w(f"| {k} | {v:.1f} | {v / rec:.2f} |\n")
    w("\n| model · set | shipped threshold: errors / n | BPCER-2% (dev) threshold |\n")
    w("|---|---|---|\n")
    for k, row in res["rows"].items():
        cells = [f"{e}/{n} ({e / n:.1%})" for e, n in row.values()]
        w(f"| {k} | {cells[0]} | {cells[1]} |\n")
    w(f"\nthresholds: fp32 {res['fp32_thresholds']}, int8 {res['int8_thresholds']}\n")
    names = [k for k in res["fp32_sweep"][0] if k != "threshold"]
    w("\nfp32 sweep (errors/n: bona fide refused, attacks accepted)\n\n| threshold | ")
    w(" | ".join(names) + " |\n|" + "---|" * (len(names) + 1) + "\n")
    for row in res["fp32_sweep"]:
        cells = [f"{row[k][0]}/{row[k][1]}" for k in names]
        w(f"| {row['threshold']} | " + " | ".join(cells) + " |\n")
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
