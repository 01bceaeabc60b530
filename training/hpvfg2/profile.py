"""Per-phase time breakdown of training steps: where a GPU run's seconds went.

:class:`PhaseTimer` keeps exclusive time per (stage, phase): a phase nested inside another
(a recognizer's forward pass inside the generator step) is subtracted from its parent,
so the rows of one stage add up to its step time. On CUDA every phase boundary
synchronizes the device, so a phase is charged for the kernels it launched rather than
for whichever later call waited on them; on CPU plain ``perf_counter`` is honest.

:func:`instrument` times a trainer without touching its step code: it wraps the methods
that make up a step (sampling, rotations, the generator's render and composite, the
optimizer step) and hooks the recognizers' and the critic's forward and backward passes.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from torch import nn

WARMUP_STEPS = 1  # steps of each stage left out of the table: compilation, autotuning


class PhaseTimer:
    """Accumulate exclusive seconds per phase, per training stage."""

    def __init__(
        self, device: torch.device | str, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.clock = clock
        self.stage = "setup"
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.steps: dict[str, int] = defaultdict(int)
        self.skipped: dict[str, int] = defaultdict(int)
        self.items: dict[str, int] = defaultdict(int)  # triplets per stage, for the rate
        self._stack: list[list] = []  # [name, start, seconds spent in children]
        self._counting = False

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return self.clock()

    def push(self, name: str) -> None:
        """Open phase ``name`` inside whichever phase is open."""
        if self._counting:
            self._stack.append([name, self._now(), 0.0])

    def pop(self, name: str) -> None:
        """Close phase ``name`` (and any phase left open inside it)."""
        if not self._counting or not any(f[0] == name for f in self._stack):
            return
        now = self._now()
        while self._stack:
            frame_name, start, children = self._stack.pop()
            spent = now - start
            self.seconds[self.stage][frame_name] += spent - children
            self.calls[self.stage][frame_name] += 1
            if self._stack:
                self._stack[-1][2] += spent
            if frame_name == name:
                break

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name``."""
        self.push(name)
        try:
            yield
        finally:
            self.pop(name)

    @contextlib.contextmanager
    def step(self, stage: str, triplets: int) -> Iterator[None]:
        """Time one training step of ``stage``; the first few of each stage are left out."""
        self.stage = stage
        self._counting = self.skipped[stage] >= WARMUP_STEPS
        if not self._counting:
            self.skipped[stage] += 1
            yield
            return
        self._stack.clear()
        self.push("other (untimed)")
        try:
            yield
        finally:
            self.pop("other (untimed)")
            self._counting = False
            self.steps[stage] += 1
            self.items[stage] += triplets

    def table(self) -> str:
        """Return a Markdown table per stage: phase, calls per step, ms per step, share."""
        out = []
        for stage, phases in self.seconds.items():
            n = self.steps[stage]
            if not n:
                continue
            total = sum(phases.values())
            rate = self.items[stage] / total if total else 0.0
            out.append(
                f"\nprofile: stage {stage}: {n} steps after {WARMUP_STEPS} left out, "
                f"{1e3 * total / n:.1f} ms/step, {rate:.3g} triplets/s"
            )
            out.append("| phase | calls/step | ms/step | share |")
            out.append("|---|---:|---:|---:|")
            for name, sec in sorted(phases.items(), key=lambda kv: -kv[1]):
                calls = self.calls[stage][name] / n
                out.append(f"| {name} | {calls:.1f} | {1e3 * sec / n:.2f} | {sec / total:.1%} |")
        return "\n".join(out) + "\n"

    def rates(self) -> dict[str, float]:
        """Return triplets per second of each profiled stage."""
        out = {}
        for stage, phases in self.seconds.items():
            total = sum(phases.values())
            if self.steps[stage] and total:
                out[stage] = self.items[stage] / total
        return out


def _wrap(timer: PhaseTimer, obj: object, attr: str, name: str) -> None:
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        with timer.phase(name):
            return fn(*args, **kwargs)

    setattr(obj, attr, timed)


def hook_module(timer: PhaseTimer, module: nn.Module, name: str) -> None:
    """Time a module's forward passes as ``name fwd`` and its backward as ``name bwd``."""
    fwd, bwd = f"{name} fwd", f"{name} bwd"
    # Under --compile the hooks run eagerly between compiled graphs instead of being traced.
    push, pop = torch.compiler.disable(timer.push), torch.compiler.disable(timer.pop)
    module.register_forward_pre_hook(lambda *_: push(fwd))
    module.register_forward_hook(lambda *_: pop(fwd))
    module.register_full_backward_pre_hook(lambda *_: push(bwd))
    module.register_full_backward_hook(lambda *_: pop(bwd))


def instrument(trainer: object, timer: PhaseTimer) -> None:
    """Time the phases of ``trainer``'s steps (a Trainer or RenderTrainer) with ``timer``."""
    wraps: list[tuple[object, str, str]] = [
        (trainer, "sample", "data"),
        (trainer, "chips", "data"),
        (trainer, "z", "data"),
        (trainer, "rotations", "rotations"),
        (trainer, "embed", "augment + flip (system)"),  # exclusive: the recognizer is apart
        (trainer, "sface_embed", "augment + warp (sface)"),
        (trainer, "_critic_step", "critic step"),
        (trainer, "dev_metrics", "dev metrics"),
    ]
    generator = trainer.generator
    for attr in ("render", "composite", "edit"):
        if hasattr(generator, attr):
            wraps.append((generator, attr, "generator fwd"))
    for obj, attr, name in wraps:
        if hasattr(obj, attr):
            _wrap(timer, obj, attr, name)
    modules: list[tuple[nn.Module | None, str]] = [
        (trainer.recognizer, "system recognizer"),
        (getattr(trainer, "sface", None), "sface"),
        (getattr(trainer, "kvfa", None), "kvfa"),
        (getattr(trainer, "projector", None), "projector"),
        (getattr(generator, "marks", None), "landmark net"),
    ]
    # Any other network the trainer holds (an expression net, a landmark teacher...).
    known = {"generator", "projector", "critic", "recognizer", "sface", "kvfa"}
    modules += [
        (m, name) for name, m in vars(trainer).items()
        if isinstance(m, nn.Module) and name not in known
    ]  # fmt: skip
    hooked: set[int] = set()
    for module, name in modules:
        if isinstance(module, nn.Module) and id(module) not in hooked:
            hook_module(timer, module, name)
            hooked.add(id(module))
    critic = getattr(trainer, "critic", None)
    if critic is not None:  # its backward runs inside "critic step" or "backward"
        push, pop = torch.compiler.disable(timer.push), torch.compiler.disable(timer.pop)
        critic.register_forward_pre_hook(lambda *_: push("critic fwd"))
        critic.register_forward_hook(lambda *_: pop("critic fwd"))
    # KVFA's backward hook fires on embeddings computed without gradients: expected there.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    trainer.timer = timer
