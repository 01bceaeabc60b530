"""Train HPVFG 2.0 from a pack within a wall-clock budget, and write slim weights to bring back.

This is what a payload's ``run.sh`` (``training.hpvfg2.payload``) runs on a GPU machine;
with ``--tiny`` it runs the same code path on CPU in a minute, which is how it is tested.

    python -m training.hpvfg2.run --packed pack --out runs/render --budget-s 450 \\
        --init init.fp16.pt --profile

A pack folder holds ``train.npz`` and ``dev.npz`` (training.hpvfg2.pack) and optionally
``sface.fp16.onnx`` and ``system.fp16.onnx``, the two recognizers in float16.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from training.hpvfg.train import ROTATIONS
from training.hpvfg2.model import RenderConfig
from training.hpvfg2.pack import SFACE_FILE, SYSTEM_FILE, load_packed
from training.hpvfg2.slim import SLIM, write_slim
from training.hpvfg2.train import RenderTrainConfig, RenderTrainer

log = logging.getLogger(__name__)

GPU_BATCH, CPU_BATCH = 96, 24  # triplets per step


def _switch(value: str, cuda: bool) -> bool:
    return cuda if value == "auto" else value == "on"


def parser() -> argparse.ArgumentParser:
    """Return the command line of ``python -m training.hpvfg2.run``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--packed", type=Path, required=True, help="folder from training.hpvfg2.pack")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, history)")
    p.add_argument("--slim", type=Path, default=None, help=f"also write {SLIM} and snapshots here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget (480)")
    p.add_argument("--steps", type=int, default=6000, help="generator steps at most (6000)")
    p.add_argument("--warmup-steps", type=int, default=1500, help="reconstruction-only steps")
    p.add_argument("--kvfa-steps", type=int, default=1500, help="KVFA steps (1500)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help=f"triplets per step ({GPU_BATCH} CUDA, {CPU_BATCH} CPU)",
    )
    p.add_argument("--work", type=int, default=96, help="working resolution (96)")
    p.add_argument(
        "--eval-every", type=int, default=None, help="dev metrics and snapshot (250; tiny 3)"
    )
    p.add_argument("--init", type=Path, default=None, help="start from these slim weights")
    p.add_argument(
        "--lr-warmup", type=int, default=None, help="LR warm-up steps (20; 200 with --init)"
    )
    p.add_argument("--profile", action="store_true", help="print a per-phase time table")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 (auto: CUDA)")
    p.add_argument(
        "--channels-last", choices=("auto", "on", "off"), default="auto", help="NHWC (auto: CUDA)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument(
        "--rotations", choices=ROTATIONS, default="auto",
        help="how training rotations are drawn (auto: the faster batched way on CUDA)",
    )  # fmt: skip
    p.add_argument("--sface-impl", choices=("torch", "graph"), default="torch")
    p.add_argument("--snapshot-every", type=int, default=2000, help="keep these snapshots too")
    p.add_argument("--keep-snapshots", type=int, default=5, help="snapshots kept at most (5)")
    p.add_argument("--tiny", action="store_true", help="a minute-long CPU configuration")
    return p


def main(argv: list[str] | None = None) -> int:
    """Train the re-rendering generator and KVFA from packed chips."""
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    chips = {name: args.packed / f"{name}.npz" for name in ("train", "dev")}
    for path in chips.values():
        if not path.is_file():
            p.error(f"--packed: no {path.name} in {args.packed}")
    if args.init is not None and not args.init.is_file():
        p.error(f"--init: no weights at {args.init}")
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.work < 16 or args.work % 16:
        p.error("--work must be a positive multiple of 16")
    for name in ("steps", "kvfa_steps", "batch", "eval_every", "keep_snapshots", "budget_s"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    sface, system = args.packed / SFACE_FILE, args.packed / SYSTEM_FILE
    cfg = RenderTrainConfig(
        chips["train"], chips["dev"], args.out, sface=sface if sface.is_file() else None,
        steps=args.steps, warmup_steps=args.warmup_steps, kvfa_steps=args.kvfa_steps,
        batch=args.batch or (GPU_BATCH if cuda else CPU_BATCH), device=args.device,
        time_budget_s=args.budget_s, eval_every=args.eval_every or 250,
        generator=RenderConfig(work=args.work), snapshots=args.slim, init=args.init,
        lr_warmup=args.lr_warmup or (200 if args.init else 20), profile=args.profile,
        amp=_switch(args.amp, cuda), channels_last=_switch(args.channels_last, cuda),
        compile=args.compile, rotations=args.rotations, sface_impl=args.sface_impl,
        system_recognizer=system if system.is_file() else None,
        snapshot_every=args.snapshot_every, keep_snapshots=args.keep_snapshots,
    )  # fmt: skip
    if args.tiny:
        tiny = RenderConfig(work=32, levels=2, base=8, style=32)
        cfg = dataclasses.replace(
            cfg, steps=4, warmup_steps=2, kvfa_steps=2, batch=2, eval_every=args.eval_every or 3,
            dev_faces=8,
            generator=tiny,
        )  # fmt: skip
    if cfg.sface is None:
        log.warning("no SFace in %s: training against the system recognizer alone", args.packed)
    log.info(
        "device %s, batch %d, bf16 %s, channels_last %s, compile %s, rotations on %s",
        cfg.device, cfg.batch, cfg.amp, cfg.channels_last, cfg.compile, cfg.rotations,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    sets = (load_packed(chips["train"]), load_packed(chips["dev"]))
    checkpoint = RenderTrainer.create(cfg, *sets).fit()
    if args.slim is not None:
        args.slim.mkdir(parents=True, exist_ok=True)
        write_slim(checkpoint, args.slim / SLIM)
    sys.stdout.write(f"{checkpoint}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
