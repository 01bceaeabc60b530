"""Throughput of an HPVFG 2.0 identity step: 1.0.0-era plumbing against the new one, on CPU.

"old" is the first GPU run's path: SFace through the node-by-node ONNX interpreter, 48 key
rotations from one numpy QR per band each, NCHW, float32. "new" is the native SFace
module, rotations from one batched torch QR per band size, channels_last and, with
``--amp``, bf16 autocast. Both trainers run in one process on the same chips, their steps
interleaved so that load on the machine hits both alike; the table gives median step
times, triplets/s and the ratio to "old". The parts are also timed alone: the rotations
of one step, and SFace forward + backward on the step's faces.

Run: python benchmarks/train_step.py [--batch 8] [--work 96] [--steps 6] [--amp]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from edge_agent.assets import asset_path
from training.chips import build_chip_set, list_images
from training.datasets import data_root
from training.hpvfg.train import band_rotations
from training.hpvfg2.model import RenderConfig
from training.hpvfg2.pack import load_packed
from training.hpvfg2.profile import PhaseTimer, instrument
from training.hpvfg2.train import SFACE_ENV, RenderTrainConfig, RenderTrainer


def _sface() -> Path | None:
    env = os.environ.get(SFACE_ENV)
    path = (
        Path(env)
        if env
        else data_root().parent / "models/judges/face_recognition_sface_2021dec.onnx"
    )
    return path if path.is_file() else None


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _row(name: str, ms: float, base: float, triplets: int | None) -> str:
    rate = f"{1000 * triplets / ms:.1f}" if triplets else "-"
    return f"| {name} | {ms:.1f} | {rate} | {base / ms:.2f}x |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8, help="triplets per step (8)")
    p.add_argument("--work", type=int, default=96, help="generator working resolution (96)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per path (6)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in the new path")
    p.add_argument("--packed", type=Path, default=None, help="train.npz pack (default: samples)")
    p.add_argument("--profile", action="store_true", help="also print the new path's phases")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.packed is not None:
        chips = load_packed(args.packed)
    else:
        root = asset_path("sample_faces")
        chips = build_chip_set(root, list_images(root))
    sface = _sface()
    b = args.batch
    with tempfile.TemporaryDirectory() as tmp:
        base = RenderTrainConfig(
            Path(tmp), Path(tmp), Path(tmp), sface=sface, warmup_steps=0, steps=10**6,
            batch=b, generator=RenderConfig(work=args.work), rotations="numpy",
            sface_impl="graph",
        )  # fmt: skip
        new = dataclasses.replace(
            base, rotations="auto", sface_impl="torch", channels_last=True, amp=args.amp
        )
        trainers = {
            "old": RenderTrainer.create(base, chips, chips),
            "new": RenderTrainer.create(new, chips, chips),
        }
        if args.profile:
            instrument(trainers["new"], PhaseTimer("cpu"))
        opts = {k: torch.optim.Adam(t.generator.parameters(), lr=1e-4) for k, t in trainers.items()}
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for i in range(args.steps + 1):  # the first step of each is a warm-up
            for k, t in trainers.items():
                start = time.perf_counter()
                timed = t.timer.step("identity", b) if t.timer is not None else nullcontext()
                with timed, t.autocast():
                    t.generator_step(opts[k])
                if i:
                    times[k].append(time.perf_counter() - start)
    old_ms = 1000 * float(np.median(times["old"]))
    new_ms = 1000 * float(np.median(times["new"]))
    print(
        f"\nidentity step, batch {b} triplets, work {args.work}, SFace {'on' if sface else 'off'},"
    )
    threads = torch.get_num_threads()
    print(f"{args.steps} interleaved steps each, torch {torch.__version__}, {threads} threads")
    print("\n| path | ms/step (median) | triplets/s | vs old |")
    print("|---|---:|---:|---:|")
    print(_row("old: ONNX-interpreter SFace, numpy rotations, NCHW fp32", old_ms, old_ms, b))
    amp = "bf16 autocast" if args.amp else "fp32"
    print(_row(f"new: native SFace, batched rotations, channels_last, {amp}", new_ms, old_ms, b))

    rows = []
    t = trainers["new"]
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    for n in (2 * b, 48, 192):  # per identity step: 2 x batch (48 at 24, 192 at 96)
        numpy_ms = _median_ms(lambda n=n: [t.basis.random_rotation(rng) for _ in range(n)], 5)
        torch_ms = _median_ms(lambda n=n: band_rotations(t.basis.bands, n, gen, cpu), 5)
        hh_ms = _median_ms(lambda n=n: band_rotations(t.basis.bands, n, gen, cpu, "householder"), 5)
        rows.append(
            _row(f"{n} rotations: numpy QR per band and rotation", numpy_ms, numpy_ms, None)
        )
        rows.append(
            _row(f"{n} rotations: batched torch QR per band size", torch_ms, numpy_ms, None)
        )
        rows.append(_row(f"{n} rotations: batched Householder, all bands", hh_ms, numpy_ms, None))
    if sface is not None:
        faces = torch.rand(4 * b, 3, 112, 112) * 255

        def fwd_bwd(net):
            x = faces.clone().requires_grad_(True)
            net(x).square().sum().backward()

        graph_ms = _median_ms(lambda: fwd_bwd(trainers["old"].sface), 3)
        native_ms = _median_ms(lambda: fwd_bwd(trainers["new"].sface), 3)
        rows.append(
            _row(f"SFace fwd+bwd, {4 * b} faces: ONNX interpreter", graph_ms, graph_ms, None)
        )
        rows.append(
            _row(f"SFace fwd+bwd, {4 * b} faces: native, channels_last", native_ms, graph_ms, None)
        )
    print("\n| part | ms (median) | - | vs old |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    if args.profile:
        print(trainers["new"].timer.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
