"""Save, resume and warm-start a :class:`training.hpvfg.train.Trainer`'s weights."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from training.hpvfg.projector import RotationBasis, RotationProjector
from training.hpvfg.train_ops import load_matching

log = logging.getLogger("training.hpvfg.train")  # the name the logs have always carried


class Checkpoints:
    """Checkpoint and init-weights handling; mixed into ``Trainer``."""

    def _save(self, path: Path, step: int, g_opt, k_opt) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "step": step,
                "config": dataclasses.asdict(self.cfg),
                "basis": dataclasses.asdict(self.basis),
                "generator": self.generator.state_dict(),
                "kvfa": self.kvfa.state_dict(),
                "g_opt": g_opt.state_dict(),
                "k_opt": k_opt.state_dict(),
                "rng": self.rng.bit_generator.state,
                "rot_rng": self.rot_gen.get_state(),
                "history": self.history,
                "milestones": self.milestones,
            },
            tmp,
        )
        tmp.replace(path)

    def _resume(self, path: Path, g_opt, k_opt) -> int:
        if not path.is_file():
            return 0
        state = torch.load(path, map_location=self.dev, weights_only=False)
        self._set_basis(state["basis"])
        self.generator.load_state_dict(state["generator"])
        self.kvfa.load_state_dict(state["kvfa"])
        g_opt.load_state_dict(state["g_opt"])
        k_opt.load_state_dict(state["k_opt"])
        self.rng.bit_generator.state = state["rng"]
        if "rot_rng" in state:
            self.rot_gen.set_state(state["rot_rng"].cpu())
        self.history = state["history"]
        self.milestones = {int(k): v for k, v in state.get("milestones", {}).items()}
        log.info("resumed from %s at step %d", path, state["step"])
        return int(state["step"])

    def _set_basis(self, b: dict) -> None:
        """Adopt a saved rotation basis: the generator and KVFA were trained in it."""
        self.basis = RotationBasis(
            np.asarray(b["mean_dir"], np.float32), np.asarray(b["basis"], np.float32),
            tuple(int(n) for n in b["bands"]),
        )  # fmt: skip
        self.projector = RotationProjector(self.basis).to(self.dev)

    def init_from(self, path: Path) -> list[str]:
        """Start from an earlier run's weights (slim or checkpoint); return what did not load.

        Entries whose names and shapes match load; the rest (a new input channel, a new
        head) keep their fresh initialisation and are logged. Optimizers, steps and history
        start afresh, and so does the learning-rate warm-up.
        """
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "basis" in state:
            self._set_basis(state["basis"])
        odd: list[str] = []
        for name in ("generator", "kvfa", "critic"):
            module = getattr(self, name, None)
            if module is None:
                continue
            if name not in state:
                odd.append(f"{name}: not in the init weights")
                continue
            odd += load_matching(module, state[name], name)
        log.info("initialised from %s (step %s)", path, state.get("step"))
        groups: dict[str, list[str]] = {}
        for line in odd:  # "module.entry: reason" -> one line per module and reason
            head, reason = line.split(": ", 1)
            module, _, entry = head.partition(".")
            groups.setdefault(f"{module}: {reason}", []).append(entry or module)
        for what, names in groups.items():
            more = f" and {len(names) - 6} more" if len(names) > 6 else ""
            log.warning("init: %s: %s%s", what, ", ".join(names[:6]), more)
        return odd
