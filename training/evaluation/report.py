"""Write an evaluation's JSON, a Markdown report, a picture grid and ROC curves."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from training.evaluation import metrics
from training.evaluation.report_sections import sections as extra_sections

# The paper's LFW numbers and this project's targets (DESIGN.md section 1).
PAPER_LFW = {
    "anonymity": 0.962,
    "diversity": 0.783,
    "synchronism_auc": 0.973,
    "synchronism_eer": 0.092,
    "detection_rate": 1.0,
    "pose_error_yaw": 2.018,
    "pose_error_pitch": 3.102,
    "pose_error_roll": 1.998,
    "expression_agreement": 0.805,
    "kvfa_crr": 0.927,
    "kvfa_far": 0.078,
    "kvfa_auc": 0.984,
}
# The paper's CelebA numbers (DESIGN.md section 1); FID has no counterpart here.
PAPER_CELEBA = {
    "anonymity": 0.922,
    "diversity": 0.728,
    "synchronism_auc": 0.992,
    "synchronism_eer": 0.089,
    "detection_rate": 1.0,
    "pose_error_yaw": 1.992,
    "pose_error_pitch": 2.119,
    "pose_error_roll": 2.006,
    "expression_agreement": 0.833,
    "kvfa_crr": 0.956,
    "kvfa_far": 0.064,
    "kvfa_auc": 0.989,
}
# Datasets the paper reports on: the report's "paper" column, by --dataset.
PAPER = {"lfw": ("LFW", PAPER_LFW), "celeba": ("CelebA", PAPER_CELEBA)}
TARGETS = {
    "anonymity": ">= 0.99",
    "diversity": ">= 0.95",
    "differentiation": ">= 0.99",
    "synchronism_auc": ">= 0.99",
    "synchronism_eer": "<= 0.05",
    "detection_rate": "1.0",
    "pose_error_yaw": "<= 2",
    "pose_error_pitch": "<= 2",
    "pose_error_roll": "<= 2",
    "expression_agreement": ">= 0.85",
    "kvfa_crr": ">= 0.98",
    "kvfa_far": "<= 0.001",
}
TILE = 128
# Nested results that get their own section instead of a row of the main table.
SECTIONS = ("judges", "realism_auc_detail", "mesonet", "mesonet_note", "real_person_match")


def guess_dataset(root: Path) -> str | None:
    """Return "lfw" or "celeba" when a folder name in ``root`` says so, else None."""
    names = [part.lower() for part in Path(root).resolve().parts]
    for key in PAPER:
        if any(name.startswith(key) for name in names):
            return key
    return None


def write_json(path: Path, results: dict) -> None:
    """Write ``results`` atomically as pretty JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _fmt(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} bits: {_fmt(x)}" for k, x in v.items())
    return str(v)


def format_metric(value: object) -> str:
    """Format a metric for a report or the terminal: 4 decimals, "n/a" for None."""
    return _fmt(value)


def grid_image(rows: list[list[np.ndarray]], labels: list[str]) -> np.ndarray:
    """Tile rows of BGR frames into one image with a header of column labels."""
    width = max(len(r) for r in rows)
    header = np.full((24, width * TILE, 3), 255, np.uint8)
    for j, label in enumerate(labels[:width]):
        cv2.putText(
            header,
            label,
            (j * TILE + 4, 17),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    body = np.full((len(rows) * TILE, width * TILE, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            body[i * TILE : (i + 1) * TILE, j * TILE : (j + 1) * TILE] = cv2.resize(
                frame, (TILE, TILE), interpolation=cv2.INTER_AREA
            )
    return np.vstack([header, body])


def plot_rocs(path: Path, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Plot one ROC curve per score set, with its AUC, to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (gen, imp) in scores.items():
        curve = metrics.roc(gen, imp)
        ax.plot(curve.fpr, curve.tpr, label=f"{name} (AUC {metrics.auc(gen, imp):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("ROC curves")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    out_json: Path,
    results: dict,
    grid: np.ndarray,
    labels: list[str],
    scores: dict,
    command: str,
    dataset: str | None = "lfw",
) -> Path:
    """Write the JSON, ``<stem>_grid.png``, ``<stem>_roc.png`` and ``<stem>.md`` side by side.

    ``dataset`` ("lfw", "celeba" or None) picks the paper's column; None leaves it out.
    """
    write_json(out_json, results)
    stem = out_json.with_suffix("")
    grid_png, roc_png = Path(f"{stem}_grid.png"), Path(f"{stem}_roc.png")
    cv2.imwrite(str(grid_png), grid)
    plot_rocs(roc_png, scores)
    lines = [
        f"# Evaluation: {results['anonymizer']} judged by {results['judge']}",
        "",
        f"Command: `{command}`",
        "",
        f'{results["n_triplets"]} triplets. The judge decides "same identity" at its EER '
        f"threshold on the original pairs: {_fmt(results['threshold'])} "
        f"({results['judge_metric']}); its AUC on the originals is "
        f"{results['judge_auc_original']:.4f}.",
        "",
    ]
    name, paper = PAPER.get(dataset or "", (None, None))
    head = ["metric", "measured", *([f"paper ({name})"] if paper else []), "target"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, value in results.items():
        if key in ("judge", "anonymizer", "judge_metric", "threshold", "n_triplets"):
            continue
        if key in SECTIONS:
            continue
        cells = [key, _fmt(value), *([_fmt(paper.get(key))] if paper else []), TARGETS.get(key, "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "`n/a` means the anonymizer has no key or no key-controlled recovery, so the metric "
        "does not apply. BRISQUE (lower is better), measured on the 150x150 face chip, stands "
        "in for FID, whose Inception weights cannot be fetched here. Pose errors come from "
        "68 dlib landmarks and solvePnP; differences below about 2 degrees are within that "
        "tool's noise (docs/measurements/head_pose_validation.md).",
        "",
        *extra_sections(results),
        f"![originals and anonymized faces]({grid_png.name})",
        "",
        f"![ROC curves]({roc_png.name})",
        "",
    ]
    md = Path(f"{stem}.md")
    md.write_text("\n".join(lines))
    return md
