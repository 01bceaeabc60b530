"""Slim float16 weights: what a GPU run brings back, and how they become a checkpoint again."""

from __future__ import annotations

from pathlib import Path

import torch

SLIM = "weights.fp16.pt"


def write_slim(checkpoint: Path, out: Path) -> Path:
    """Keep what export needs (config, basis, weights in float16, history), drop optimizers."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    half = {
        k: {n: t.half() if t.is_floating_point() else t for n, t in state[k].items()}
        for k in ("generator", "kvfa")
    }
    slim = {k: state[k] for k in ("step", "config", "basis", "history")} | half
    torch.save(slim, out)
    return out


def read_slim(path: Path, checkpoint: Path) -> Path:
    """Turn slim weights back into a checkpoint that ``kfaar export`` reads."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for k in ("generator", "kvfa"):
        state[k] = {n: t.float() if t.is_floating_point() else t for n, t in state[k].items()}
    torch.save(state, checkpoint)
    return checkpoint


def keep_newest(folder: Path, pattern: str, keep: int) -> None:
    """Delete all but the ``keep`` newest files named like ``pattern`` (sorted by name)."""
    for old in sorted(folder.glob(pattern))[:-keep]:
        old.unlink()
