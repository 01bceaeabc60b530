"""The settings of an HPVFG + KVFA training run (``kfaar train``'s flags land here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.hpvfg.generator import GeneratorConfig
from training.hpvfg.kvfa import KVFAConfig

ROTATIONS = ("auto", "qr", "householder", "host", "numpy")


@dataclass
class TrainConfig:
    """Settings of one training run: data, steps, loss weights, budget, throughput."""

    train_chips: Path
    dev_chips: Path
    out: Path
    steps: int = 1000
    kvfa_steps: int = 1000
    batch: int = 12  # triplets per step; the recognizer sees 4 virtual faces per triplet
    lr: float = 1e-2
    margin: float = 0.7  # "apart" pushes cosines below this (same person is >= 0.93)
    kvfa_lr: float = 2e-3
    # KVFA outputs must stay in the recognizer's space, where two random people already
    # score about 0.8: push impostors only below that, not into unnatural directions.
    kvfa_margin: float = 0.85
    w_target: float = 1.0  # R(G(x, z')) toward z': the virtual identity is z'
    w_anonymity: float = 1.0
    w_synchronism: float = 1.0
    w_diversity: float = 1.0
    w_differentiation: float = 1.0
    w_reconstruction: float = 1.0  # G(x, z, z) == x
    w_edit: float = 0.002  # prior: small edits in within-person std units
    seed: int = 2025
    device: str = "cpu"
    eval_every: int = 200
    dev_faces: int = 240
    # Wall-clock budget (None: none). The generator stage gets `generator_share` of it, then
    # the KVFA stage starts early; past the budget the run saves and stops, resumable.
    time_budget_s: float | None = None
    generator_share: float = 0.85
    lr_warmup: int = 20  # steps of linear LR warm-up at the start of each stage
    # Weights to start from (slim or full checkpoint of an earlier run): what matches the
    # current models loads, the rest is reported. A checkpoint in ``out`` takes precedence.
    init: Path | None = None
    # Throughput. Rotations: "qr" (batched torch.linalg.qr on the training device),
    # "householder" (batched reflections there), "auto" (CPU: qr; CUDA: whichever of the two
    # is faster, timed once), "host" (qr on the CPU, uploaded asynchronously), "numpy"
    # (1.0.0's loop of one numpy QR per band and rotation).
    rotations: str = "auto"
    amp: bool = False  # bf16 autocast of the steps (CUDA; on CPU only where bf16 is fast)
    channels_last: bool = False  # NHWC convolutions (tensor cores on CUDA)
    compile: bool = False  # torch.compile the generator, recognizers and critic
    profile: bool = False  # time every phase of every step; print the table at the end
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    kvfa: KVFAConfig = field(default_factory=KVFAConfig)
