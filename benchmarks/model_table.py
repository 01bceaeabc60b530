"""Print the model card's metric table: kfaar eval results against the paper and the goals.

Run: python benchmarks/model_table.py out/model-report/fp32.json out/model-report/int8.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# metric -> (paper's LFW number, our goal, True when higher is better); DESIGN.md section 1.
ROWS = {
    "anonymity": (0.962, 0.99, True),
    "diversity": (0.783, 0.95, True),
    "differentiation": (None, 0.99, True),
    "synchronism_auc": (0.973, 0.99, True),
    "synchronism_eer": (0.092, 0.05, False),
    "detection_rate": (1.0, 1.0, True),
    "pose_error_yaw": (2.018, 2.0, False),
    "pose_error_pitch": (3.102, 2.0, False),
    "pose_error_roll": (1.998, 2.0, False),
    "expression_agreement": (0.805, 0.85, True),
    "kvfa_crr": (0.927, 0.98, True),
    "kvfa_far": (0.078, 0.001, False),
    "kvfa_auc": (0.984, None, True),
    "brisque_original": (None, None, False),
    "brisque_virtual": (None, None, False),
    "ms_per_face": (None, None, False),
}
PAPER_WRONG_BITS = {"1": 0.702, "3": 0.603, "5": 0.595, "16": 0.485}  # 256-bit key


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def table(results: dict[str, dict]) -> str:
    names = list(results)
    head = "| metric | paper (LFW) | goal | " + " | ".join(names) + " |"
    lines = [head, "|---" * (3 + len(names)) + "|"]
    for metric, (paper, goal, higher) in ROWS.items():
        cells = []
        for r in results.values():
            v = r.get(metric)
            met = goal is not None and v is not None and (v >= goal if higher else v <= goal)
            cells.append(fmt(v) + (" ✓" if met else ""))
        sign = "≥" if higher else "≤"
        g = f"{sign} {goal:g}" if goal is not None else "—"
        lines.append(f"| {metric} | {fmt(paper)} | {g} | " + " | ".join(cells) + " |")
    for bits, paper in PAPER_WRONG_BITS.items():
        cells = []
        for r in results.values():
            v = (r.get("wrong_key_accept") or {}).get(bits)
            cells.append(fmt(v) + (" ✓" if v is not None and v <= 0.001 else ""))
        row = f"| accepted with {bits} wrong bits | {paper:.3f} | ≤ 0.001 | "
        lines.append(row + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="kfaar eval JSON files")
    args = parser.parse_args()
    results = {p.stem: json.loads(p.read_text()) for p in args.results}
    first = next(iter(results.values()))
    sys.stdout.write(
        f"{first['n_triplets']} triplets, judge {first['judge']} "
        f"(threshold {first['threshold']}), KVFA threshold {first.get('kvfa_threshold')}\n\n"
    )
    sys.stdout.write(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
