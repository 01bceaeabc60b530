"""Passive PAD on real presentation attacks: ISO/IEC 30107-3 APCER per attack type, BPCER.

Reads the samples named in benchmarks/data/liveness_real_sources.json from ``--root``
(``owner+name/path`` files, or the bare snapshots ``owner+name/repo`` left by fetch),
checks every sha256, takes frames from videos (``--attempts`` runs of ``--frames``
consecutive frames, evenly spaced over the clip), finds the face with YuNet and scores it
with PassiveLiveness, fp32 and int8. Reports errors/n per frame and per attempt (an
attempt's frames fused by the median, as the edge does; a still is a one-frame attempt):
- at the shipped threshold;
- at the highest threshold where BPCER <= 2% on the real bona fide captures (the
  repositories' live selfies, live videos and MiniFASNet's live sample, plus the bundled
  sample faces); LFW dev photos (press photos) are reported on their own, not used.

Run: python benchmarks/liveness_real.py --root MEDIA_DIR [--out F.json]
(docs/LIVENESS.md says how to get the media)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: sibling import

from liveness import dev_photos, rate

from edge_agent.assets import asset_path
from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.liveness.pad import PassiveLiveness, fuse_scores
from training.liveness.real_data import (
    MANIFEST,
    bpcer_threshold,
    load_manifest,
    materialise,
    still,
    video_attempts,
)

LFW = "bona fide: LFW dev photos (press photos)"


def score_attempts(attempts, det, pads) -> dict[str, list[list[float | None]]]:
    """Per precision, per attempt, per frame: live score, None where no face is found."""
    out: dict[str, list[list[float | None]]] = {p: [] for p in pads}
    for frames in attempts:
        faces = []
        for fr in frames:
            try:
                faces.append(det.primary(fr))
            except NoFaceError:
                faces.append(None)
        for p, pad in pads.items():
            out[p].append([pad.score(fr, f) if f is not None else None
                           for fr, f in zip(frames, faces, strict=True)])  # fmt: skip
    return out


def fused(attempt: list[float | None]) -> float | None:
    """An attempt's score as the edge fuses it; None if no frame had a face."""
    got = [s for s in attempt if s is not None]
    return fuse_scores(got) if got else None


def collect(root: Path, n_att: int, per: int, n_lfw: int, cache: Path) -> dict[str, list]:
    """Return {group: [attempt frames, ...]} for every set, media verified by hash."""
    groups: dict[str, list] = {}
    for s in load_manifest():
        src = s.repo.split("/")[1]
        if s.label == "attack":
            name = f"attack: {s.attack_type} [{src}]"
        else:
            kind = "video" if s.is_video else "still"
            name = f"bona fide: live {kind} [{src}]"
        path = materialise(root, s, cache)
        att = video_attempts(path, n_att, per) if s.is_video else [[still(path)]]
        groups.setdefault(name, []).extend(att)
    samples = sorted(asset_path("sample_faces").glob("*/*.jpg"))
    groups["bona fide: bundled sample faces"] = [[load_image(f)] for f in samples]
    if n_lfw:
        groups[LFW] = [[load_image(f)] for f in dev_photos(n_lfw)]
    return groups


def table(res: dict, prec: str, level: str) -> str:
    """Markdown rows: errors/n at the shipped and the BPCER-2% thresholds."""
    th = res["thresholds"][prec][level]
    head = (
        f"\n{prec}, per {level} (thresholds: shipped {th['shipped']:.3f}, "
        f"BPCER<=2% on real bona fide {th['bpcer2']:.3f})\n"
    )
    lines = [
        head,
        "| set | n | errors at shipped | errors at BPCER-2% point |",
        "|---|---|---|---|",
    ]
    for name, row in res["rows"][prec][level].items():
        cells = [f"{e}/{n} ({e / max(n, 1):.1%})" for e, n in (row["shipped"], row["bpcer2"])]
        lines.append(f"| {name} | {row['shipped'][1]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True, help="owner+name/path files or snapshots")
    p.add_argument("--attempts", type=int, default=10, help="attempts taken from each video")
    p.add_argument("--frames", type=int, default=3, help="consecutive frames per attempt")
    p.add_argument("--lfw", type=int, default=200, help="LFW dev photos (0: none)")
    p.add_argument("--out", type=Path, default=None, help="also write the scores as JSON")
    a = p.parse_args()
    if not a.root.is_dir() or a.attempts < 1 or a.frames < 1:
        p.error(f"--root must be a directory ({a.root}); --attempts and --frames >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            groups = collect(a.root, a.attempts, a.frames, a.lfw, Path(tmp))
        except ValueError as exc:  # a missing or altered file: say which
            p.exit(2, f"liveness_real: {exc}\n")
    det = FaceDetector()
    pads = {"fp32": PassiveLiveness("fp32"), "int8": PassiveLiveness("int8")}
    scores = {g: score_attempts(att, det, pads) for g, att in groups.items()}
    res: dict = {"manifest": str(MANIFEST), "frames_per_attempt": a.frames, "rows": {},
                 "thresholds": {}, "scores": scores}  # fmt: skip
    for prec, pad in pads.items():
        res["rows"][prec], res["thresholds"][prec] = {}, {}
        for level in ("frame", "attempt"):
            per = {g: ([x for att in sc[prec] for x in att] if level == "frame"
                       else [fused(att) for att in sc[prec]])
                   for g, sc in scores.items()}  # fmt: skip
            bona = [x for g, v in per.items() if g.startswith("bona") and g != LFW for x in v]
            th = {"shipped": pad.threshold, "bpcer2": bpcer_threshold(bona)}
            res["thresholds"][prec][level] = th
            rows = {}
            for g, v in per.items():
                rows[g] = {k: list(rate(v, t, not g.startswith("bona"))) for k, t in th.items()}
            rows["bona fide: all real captures + sample faces (threshold set)"] = {
                k: list(rate(bona, t, False)) for k, t in th.items()}  # fmt: skip
            res["rows"][prec][level] = rows
    n = {g: (len(att), sum(len(x) for x in att)) for g, att in groups.items()}
    sys.stdout.write("| set | attempts | frames |\n|---|---|---|\n")
    sys.stdout.write("".join(f"| {g} | {k[0]} | {k[1]} |\n" for g, k in n.items()))
    for prec in pads:
        for level in ("frame", "attempt"):
            sys.stdout.write(table(res, prec, level))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
