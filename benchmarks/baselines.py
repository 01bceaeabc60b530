"""Run ``kfaar eval`` for every baseline anonymizer and write the comparison table.

The first run starts with an empty judge cache, so its wall time is the cold cost of the
harness; later runs reuse the cached judge embeddings of the originals.

Run: python benchmarks/baselines.py --out docs/baselines.md [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from training.datasets import data_root

log = logging.getLogger("baselines")

ANONYMIZERS = ("identity", "blur", "blur:12", "pixelate", "scramble")
COLUMNS = (
    ("anonymity", "anonymity"),
    ("diversity", "diversity"),
    ("differentiation", "differentiation"),
    ("sync AUC", "synchronism_auc"),
    ("sync EER", "synchronism_eer"),
    ("virtual verify AUC", "virtual_verify_auc"),
    ("detection", "detection_rate"),
    ("yaw err", "pose_error_yaw"),
    ("pitch err", "pose_error_pitch"),
    ("roll err", "pose_error_roll"),
    ("expression", "expression_agreement"),
    ("BRISQUE orig", "brisque_original"),
    ("BRISQUE virt", "brisque_virtual"),
    ("KVFA CRR", "kvfa_crr"),
    ("KVFA FAR", "kvfa_far"),
    ("KVFA AUC", "kvfa_auc"),
    ("ms/face", "ms_per_face"),
)


def fmt(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--limit", type=int, default=None, help="first N triplets only")
    parser.add_argument("--seed", type=int, default=2025)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = data_root()
    triplets = root / "splits" / "lfw_dev_triplets.txt"
    results, timings = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "KFAAR_CACHE_DIR": str(Path(tmp) / "cache")}
        for name in ANONYMIZERS:
            out = Path(tmp) / f"{name.replace(':', '_')}.json"
            cmd = [
                "kfaar",
                "eval",
                "--root",
                str(root / "lfw"),
                "--triplets",
                str(triplets),
                "--judge",
                "dlib",
                "--anonymizer",
                name,
                "--seed",
                str(args.seed),
                "--out",
                str(out),
            ]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            log.info("running: %s", " ".join(cmd))
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            timings[name] = time.perf_counter() - t0
            results[name] = json.loads(out.read_text())

    first = results[ANONYMIZERS[0]]
    lines = [
        "# Baselines on the paper's LFW dev triplets",
        "",
        f"Measured with `python benchmarks/baselines.py --out {args.out}` on "
        f"{first['n_triplets']} triplets of `splits/lfw_dev_triplets.txt` "
        f"({first['n_triplets_skipped']} lines skipped as inconsistent), judge "
        f"`{first['judge']}` (EER threshold {first['threshold']:.4f} on the original pairs, "
        f"same-person AUC {first['judge_auc_original']:.4f}), seed {args.seed}, on a "
        f"{os.cpu_count()}-core machine.",
        "",
        "| metric | " + " | ".join(ANONYMIZERS) + " |",
        "|---|" + "---|" * len(ANONYMIZERS),
    ]
    for label, key in COLUMNS:
        lines.append(f"| {label} | " + " | ".join(fmt(results[a][key]) for a in ANONYMIZERS) + " |")
    for bits in ("1", "3", "5", "16"):
        lines.append(
            f"| wrong key, {bits} bits | "
            + " | ".join(
                fmt(r["wrong_key_accept"][bits]) if r["wrong_key_accept"] else "null"
                for r in results.values()
            )
            + " |"
        )
    lines.append(
        "| wrong-key trials per bit count | "
        + " | ".join(fmt(r.get("wrong_key_trials")) for r in results.values())
        + " |"
    )
    lines.append("| wall time (s) | " + " | ".join(f"{timings[a]:.0f}" for a in ANONYMIZERS) + " |")
    lines += [
        "",
        f"Wall time of the first column is with an empty judge cache "
        f"({timings[ANONYMIZERS[0]]:.0f} s for {first['n_triplets']} triplets); the others "
        "reuse the cached judge embeddings "
        "of the originals.",
        "",
        "`null` marks metrics that do not apply: keyless anonymizers have no diversity, KVFA "
        "or wrong-key figures. `blur` is sigma 6 px on the 150 px face chip, `blur:12` sigma "
        "12; `pixelate` is a 10x10 mosaic; `scramble` is a keyed permutation of 15 px "
        "blocks, a classical invertible baseline that exercises the key and KVFA metrics.",
        "",
        "BRISQUE (lower is better) is measured on the 150x150 face chip. The identity "
        "anonymizer still resamples the face twice (align, paste back), so its pose errors "
        "(under 1 degree) and expression agreement are the floor of the pipeline and of the "
        "measuring tools, not of an anonymizer.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
