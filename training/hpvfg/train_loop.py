"""The step loop of :class:`training.hpvfg.train.Trainer`: stages, time budget, evaluation."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

from edge_agent.progress import progress
from training.hpvfg.train_ops import cosine_lr

log = logging.getLogger("training.hpvfg.train")  # the name the logs have always carried


class TrainLoop:
    """Run both stages with checkpoints; mixed into ``Trainer``, which supplies the steps."""

    # -- loop ---------------------------------------------------------------------
    def fit(self) -> Path:
        c = self.cfg
        c.out.mkdir(parents=True, exist_ok=True)
        ckpt = c.out / "checkpoint.pt"
        g_opt = torch.optim.Adam(self.generator.parameters(), lr=c.lr)
        k_opt = torch.optim.Adam(self.kvfa.parameters(), lr=c.kvfa_lr)
        start = self._resume(ckpt, g_opt, k_opt)
        if start == 0 and c.init is not None:
            self.init_from(c.init)
        if c.profile and self.timer is None:
            from training.hpvfg2.profile import PhaseTimer, instrument

            instrument(self, PhaseTimer(self.dev))
        total = c.steps + c.kvfa_steps
        bar = progress(range(start, total), desc="train", initial=start, total=total)
        t0 = time.perf_counter()
        skipping, kvfa_t0 = False, None
        for step in bar:
            elapsed = time.perf_counter() - t0
            if c.time_budget_s is not None and elapsed > c.time_budget_s:
                log.info("time budget of %.0f s spent at step %d: saving", c.time_budget_s, step)
                self._save(ckpt, step, g_opt, k_opt)
                break
            if self._skip_to_kvfa(step, elapsed):
                if not skipping and step > start:  # the generator stage ends early here
                    self._milestone(step, f"end of {self.stage_of(step - 1)} (budget)")
                    self._evaluate(step, "generator", {}, t0)
                    self._save(ckpt, step, g_opt, k_opt)
                skipping = True
                continue
            stage = self.stage_of(step)
            gen_stage = step < c.steps
            stage_step, stage_len = (step, c.steps) if gen_stage else (step - c.steps, c.kvfa_steps)
            if kvfa_t0 is None and not gen_stage:
                kvfa_t0 = elapsed
            clock = self._budget_spent(elapsed, kvfa_t0)
            for group in (g_opt if gen_stage else k_opt).param_groups:
                base_lr = c.lr if gen_stage else c.kvfa_lr
                group["lr"] = cosine_lr(base_lr, stage_step, stage_len, c.lr_warmup, clock)
            with self._timed_step(stage), self.autocast():
                losses = self.generator_step(g_opt) if gen_stage else self.kvfa_step(k_opt)
            if step % 25 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[:3]})
            last = step + 1 == total
            ends = not last and self.stage_of(step + 1) != stage
            if ends:
                self._milestone(step + 1, f"end of {stage}")
            if (step + 1) % c.eval_every == 0 or last or ends:
                self._evaluate(step + 1, "generator" if gen_stage else "kvfa", losses, t0)
                self._save(ckpt, step + 1, g_opt, k_opt)
        (c.out / "history.json").write_text(json.dumps(self.history, indent=1))
        if self.timer is not None:
            log.info("time per phase%s", self.timer.table())
        return ckpt

    def _budget_spent(self, elapsed: float, kvfa_t0: float | None) -> float:
        """Return the share (0..1) of the current stage's time budget already spent."""
        c = self.cfg
        if c.time_budget_s is None:
            return 0.0
        if kvfa_t0 is None:
            return elapsed / (c.generator_share * c.time_budget_s)
        return (elapsed - kvfa_t0) / max(c.time_budget_s - kvfa_t0, 1e-6)

    def _timed_step(self, stage: str) -> contextlib.AbstractContextManager:
        if self.timer is None:
            return contextlib.nullcontext()
        return self.timer.step(stage, self.cfg.batch * (2 if stage == "kvfa" else 1))

    def _milestone(self, step: int, label: str) -> None:
        """Mark ``step`` as the end of a stage: its snapshot survives pruning."""
        self.milestones[step] = label
        log.info("milestone at step %d: %s", step, label)

    def _evaluate(self, step: int, stage: str, losses: dict, t0: float) -> None:
        row = {"step": step, "stage": stage}
        row |= {"loss_" + k: round(v, 5) for k, v in losses.items()}
        row |= {k: round(v, 4) for k, v in self.dev_metrics().items()}
        if step in self.milestones:
            row["milestone"] = self.milestones[step]
        row["elapsed_s"] = round(time.perf_counter() - t0, 1)
        self.history.append(row)
        log.info("%s", row)

    def _skip_to_kvfa(self, step: int, elapsed: float) -> bool:
        """Skip the rest of the generator stage once it has used its share of the budget."""
        c = self.cfg
        if c.time_budget_s is None or step >= c.steps:
            return False
        return elapsed > c.generator_share * c.time_budget_s
