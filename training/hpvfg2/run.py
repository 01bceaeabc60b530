"""Train HPVFG 2.0 from a pack within a wall-clock budget, and write slim weights to bring back.

This is what ``scripts/gpu_train_hpvfg2.sh`` runs on a GPU machine (about 10 minutes); with
``--tiny`` it runs the same code path on CPU in a minute, which is how it is tested.

    python -m training.hpvfg2.run --packed .gpu --out runs/render --device cuda --budget-s 480
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from training.hpvfg2.model import RenderConfig
from training.hpvfg2.pack import load_packed
from training.hpvfg2.slim import SLIM, write_slim
from training.hpvfg2.train import RenderTrainConfig, RenderTrainer

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Train the re-rendering generator and KVFA from packed chips."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--packed", type=Path, required=True, help="folder from training.hpvfg2.pack")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, history)")
    p.add_argument("--slim", type=Path, default=None, help=f"also write {SLIM} here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget (480)")
    p.add_argument("--steps", type=int, default=6000, help="generator steps at most (6000)")
    p.add_argument("--warmup-steps", type=int, default=800, help="reconstruction-only steps")
    p.add_argument("--kvfa-steps", type=int, default=1500, help="KVFA steps (1500)")
    p.add_argument("--batch", type=int, default=24, help="triplets per step (24)")
    p.add_argument("--work", type=int, default=96, help="working resolution (96)")
    p.add_argument("--tiny", action="store_true", help="a minute-long CPU configuration")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    chips = {name: args.packed / f"{name}.npz" for name in ("train", "dev")}
    sface = args.packed / "sface.fp16.onnx"
    gen = RenderConfig(work=args.work)
    cfg = RenderTrainConfig(
        chips["train"], chips["dev"], args.out, sface=sface if sface.is_file() else None,
        steps=args.steps, warmup_steps=args.warmup_steps, kvfa_steps=args.kvfa_steps,
        batch=args.batch, device=args.device, time_budget_s=args.budget_s, eval_every=250,
        generator=gen, snapshots=args.slim,
    )  # fmt: skip
    if args.tiny:
        tiny = RenderConfig(work=32, levels=2, base=8, style=32)
        cfg = dataclasses.replace(
            cfg, steps=4, warmup_steps=2, kvfa_steps=2, batch=2, eval_every=3, dev_faces=8,
            generator=tiny,
        )  # fmt: skip
    if cfg.sface is None:
        log.warning("no SFace in %s: training against the system recognizer alone", args.packed)
    sets = (load_packed(chips["train"]), load_packed(chips["dev"]))
    checkpoint = RenderTrainer.create(cfg, *sets).fit()
    if args.slim is not None:
        args.slim.mkdir(parents=True, exist_ok=True)
        write_slim(checkpoint, args.slim / SLIM)
    sys.stdout.write(f"{checkpoint}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
