"""``kfaar eval``: run the evaluation harness and write JSON, Markdown, a grid and ROC curves."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from edge_agent.assets import asset_path

log = logging.getLogger(__name__)


def sample_root() -> Path:
    """Return the bundled sample faces (a few LFW identities, see their README)."""
    return asset_path("sample_faces")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure anonymity, synchronism, KVFA and the rest on a triplet file",
        description="Evaluate an anonymizer on triplets (x1 x2 y) of an LFW-style folder, "
        "as DESIGN.md section 4 defines. Writes FILE.json, FILE.md, FILE_grid.png and "
        "FILE_roc.png. Defaults to the sample faces bundled with kfaar.",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=None,
        help="LFW-style folder ROOT/<identity>/<image> (default: bundled samples)",
    )
    p.add_argument(
        "--triplets",
        type=Path,
        default=None,
        help="file of lines 'x1 x2 y', paths relative to ROOT (default: the samples' triplets.txt)",
    )
    p.add_argument(
        "--judge",
        default="dlib",
        help="'dlib' (default) or 'onnx:PATH' for an ArcFace-style 112x112 model",
    )
    p.add_argument(
        "--anonymizer",
        default="identity",
        help="hpvfg[:int8] (the shipped model), a bundle folder from kfaar export [:int8], "
        "or a baseline: identity, blur[:SIGMA], pixelate[:N], scramble (default: identity)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N triplets")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="derive keys and random choices from this seed (default: fresh keys)",
    )
    p.add_argument(
        "--wrong-key-trials",
        type=int,
        default=4,
        help="wrong keys tried per triplet and bit count (default: 4)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the dlib judge (default: all cores)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not reuse cached judge embeddings of the originals",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/eval.json"),
        help="where to write the JSON; the report goes beside it (default: out/eval.json)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from training.evaluation.baselines import make_anonymizer
    from training.evaluation.cache import default_cache_path
    from training.evaluation.harness import EvalConfig, Harness
    from training.evaluation.judges import make_judge
    from training.evaluation.report import grid_image, write_report

    root = args.root or sample_root()
    triplets = args.triplets or (root / "triplets.txt")
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    if not triplets.is_file():
        raise FileNotFoundError(f"--triplets {triplets} is not a file")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.wrong_key_trials < 1:
        raise ValueError("--wrong-key-trials must be at least 1")
    if args.out.suffix != ".json":
        raise ValueError(f"--out must name a .json file, got {args.out}")
    config = EvalConfig(
        root=root,
        triplets=triplets,
        judge=make_judge(args.judge, args.workers),
        anonymizer=make_anonymizer(args.anonymizer),
        limit=args.limit,
        seed=args.seed,
        wrong_key_trials=args.wrong_key_trials,
        cache=None if args.no_cache else default_cache_path(),
    )
    harness = Harness(config)
    result = harness.run()
    rows, labels = harness.grid(result)
    command = "kfaar " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = write_report(
        args.out, result.results, grid_image(rows, labels), labels, result.scores, command
    )
    sys.stdout.write(f"wrote {args.out} and {md}\n")
    for key in (
        "anonymity",
        "diversity",
        "differentiation",
        "synchronism_auc",
        "detection_rate",
        "kvfa_crr",
    ):
        sys.stdout.write(f"  {key:<16} {result.results[key]}\n")
    return 0
