"""``kfaar train`` and ``kfaar export``: centralized HPVFG/KVFA training and ONNX bundles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train the HPVFG generator and KVFA with the paper's losses",
        description="Train on LFW-style data with the dev triplets' identities held out. "
        "Resumes from OUT/checkpoint.pt when it exists. Needs kfaar[eval].",
    )
    t.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, history)")
    t.add_argument("--data-root", type=Path, default=None, help="default: $KFAAR_DATA_ROOT")
    t.add_argument("--steps", type=int, default=1000, help="generator steps (default 1000)")
    t.add_argument("--kvfa-steps", type=int, default=1000, help="KVFA steps (default 1000)")
    t.add_argument("--batch", type=int, default=12, help="triplets per step (default 12)")
    t.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default 1e-2)")
    t.add_argument("--seed", type=int, default=2025, help="random seed (default 2025)")
    t.add_argument("--eval-every", type=int, default=250, help="dev metrics every N steps")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--profile", action="store_true", help="print a per-phase time table")
    t.add_argument(
        "--arch",
        choices=("identity", "render"),
        default="identity",
        help="identity: 1.0.0's face-space edit; render: HPVFG 2.0, which re-renders the "
        "whole face region (training/hpvfg2)",
    )
    t.add_argument(
        "--sface",
        type=Path,
        default=None,
        help="render: SFace ONNX for the second identity loss (default: $KFAAR_SFACE_MODEL)",
    )
    t.add_argument(
        "--warmup-steps", type=int, default=300, help="render: reconstruction-only steps"
    )
    t.add_argument("--work", type=int, default=96, help="render: working resolution (96)")
    t.set_defaults(handler=_train)

    e = sub.add_parser(
        "export",
        help="export a checkpoint to an ONNX bundle (fp32 + int8)",
        description="Write projector, generator (fp32 and static QDQ int8, calibrated on "
        "real aligned faces) and KVFA ONNX models with a manifest to OUT.",
    )
    e.add_argument("checkpoint", type=Path, help="checkpoint.pt written by kfaar train")
    e.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    e.add_argument("--version", required=True, help="model version, e.g. 1.0.0")
    e.add_argument("--data-root", type=Path, default=None, help="default: $KFAAR_DATA_ROOT")
    e.add_argument("--calib-faces", type=int, default=128, help="calibration faces (128)")
    e.set_defaults(handler=_export)


def _chips(data_root: Path | None) -> tuple[Path, Path]:
    from edge_agent.assets import cache_dir
    from training.chips import training_chip_sets
    from training.datasets import data_root as default_root

    root = data_root or default_root()
    lfw, dev = root / "lfw", root / "splits" / "lfw_dev_triplets.txt"
    if not lfw.is_dir() or not dev.is_file():
        raise FileNotFoundError(f"need {lfw}/ and {dev} (set --data-root or $KFAAR_DATA_ROOT)")
    return training_chip_sets(lfw, dev, cache_dir() / "chips")


def _train(args: argparse.Namespace) -> int:
    import torch

    from training.hpvfg.train import TrainConfig, Trainer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    for name in ("steps", "kvfa_steps", "batch", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    train, dev = _chips(args.data_root)
    common = dict(
        steps=args.steps,
        kvfa_steps=args.kvfa_steps,
        batch=args.batch,
        seed=args.seed,
        eval_every=args.eval_every,
        device=args.device,
        profile=args.profile,
    )
    if args.arch == "render":
        return _train_render(args, train, dev, common)
    cfg = TrainConfig(train, dev, args.out, lr=args.lr, **common)
    sys.stdout.write(f"{Trainer(cfg).fit()}\n")
    return 0


def _train_render(args: argparse.Namespace, train: Path, dev: Path, common: dict) -> int:
    import os

    from training.hpvfg2.model import RenderConfig
    from training.hpvfg2.train import SFACE_ENV, RenderTrainConfig, RenderTrainer

    sface = args.sface or (Path(os.environ[SFACE_ENV]) if os.environ.get(SFACE_ENV) else None)
    if sface is not None and not sface.is_file():
        raise FileNotFoundError(f"--sface: no SFace model at {sface}")
    if args.work < 16 or args.work % 16:
        raise ValueError("--work must be a positive multiple of 16")
    cfg = RenderTrainConfig(
        train,
        dev,
        args.out,
        sface=sface,
        warmup_steps=args.warmup_steps,
        generator=RenderConfig(work=args.work),
        **common,
    )
    sys.stdout.write(f"{RenderTrainer.create(cfg).fit()}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.chips import ChipSet
    from training.hpvfg.export import export_bundle

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {args.checkpoint}")
    train, _ = _chips(args.data_root)
    export_bundle(args.checkpoint, args.out, ChipSet.load(train), args.version, args.calib_faces)
    sys.stdout.write(f"{args.out}\n")
    return 0
