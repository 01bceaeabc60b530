"""Slim float16 weights: what a GPU run brings back, and how they become a checkpoint again."""

from __future__ import annotations

import re
from pathlib import Path

import torch

SLIM = "weights.fp16.pt"
SNAPSHOT = re.compile(r"weights-(\d+)\.fp16\.pt")


def _half(weights: dict) -> dict:
    return {n: t.half() if t.is_floating_point() else t for n, t in weights.items()}


def write_slim(checkpoint: Path, out: Path) -> Path:
    """Keep what export needs (config, basis, weights in float16, history), drop optimizers.

    The critic travels too when ``critic.pt`` lies beside the checkpoint, so that a run
    started with ``--init`` from these weights does not pit a fresh critic against a
    trained generator; export ignores it.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    half = {k: _half(state[k]) for k in ("generator", "kvfa")}
    slim = {k: state[k] for k in ("step", "config", "basis", "history")} | half
    slim["milestones"] = state.get("milestones", {})
    critic = checkpoint.with_name("critic.pt")
    if critic.is_file():
        slim["critic"] = _half(torch.load(critic, map_location="cpu", weights_only=False)["critic"])
    torch.save(slim, out)
    return out


def read_slim(path: Path, checkpoint: Path) -> Path:
    """Turn slim weights back into a checkpoint that ``kfaar export`` reads."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for k in ("generator", "kvfa"):
        state[k] = {n: t.float() if t.is_floating_point() else t for n, t in state[k].items()}
    state.pop("critic", None)
    torch.save(state, checkpoint)
    return checkpoint


def snapshots_to_keep(steps: list[int], milestones: set[int], every: int, keep: int) -> set[int]:
    """Pick at most ``keep`` snapshot steps: stage ends, the newest, then every ``every``-th.

    Within each kind the newest come first, so a long run keeps its latest milestones.
    """
    newest = max(steps, default=None)
    ranked = sorted((s for s in steps if s in milestones), reverse=True)
    ranked += [newest] if newest is not None else []
    ranked += sorted((s for s in steps if every > 0 and s % every == 0), reverse=True)
    out: list[int] = []
    for s in ranked:
        if s not in out and len(out) < keep:
            out.append(s)
    return set(out)


def prune_snapshots(folder: Path, milestones: set[int], every: int, keep: int) -> list[Path]:
    """Delete the snapshots ``weights-STEP.fp16.pt`` in ``folder`` that are not worth keeping."""
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := SNAPSHOT.fullmatch(p.name))}
    kept = snapshots_to_keep(sorted(found), milestones, every, keep)
    gone = [p for s, p in found.items() if s not in kept]
    for p in gone:
        p.unlink()
    return gone
