"""The door's liveness gate: passive PAD and an optional random challenge, per attempt.

Each attempt gets its own state: every frame with a face is scored by the passive model
(scores fused when the attempt closes), and, where the door asks for it, a random sequence
of timed turns is prompted and checked over the attempt's frames. The attempt is not
decided before the challenge is. The verdict travels to the service as ``LivenessEvidence``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.face.detect import Face
from edge_agent.liveness.challenge import (
    ACTIONS,
    PROMPTS,
    Challenge,
    ChallengeConfig,
    draw_sequence,
)
from edge_agent.liveness.pad import PassiveLiveness
from kfaar_pb.v1 import auth_pb2

log = logging.getLogger(__name__)

ACTIVE = "active-challenge"


@dataclass
class LivenessGate:
    """What this door checks: ``passive`` (None: off) and the challenge ``actions``."""

    passive: PassiveLiveness | None = None
    actions: tuple[str, ...] = ()  # empty: no active challenge
    challenge: ChallengeConfig = field(default_factory=ChallengeConfig)
    prompt: Callable[[str], object] = log.info  # tells the person what to do

    def __post_init__(self) -> None:
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad:
            raise ValueError(f"unknown challenge actions {bad}; choose from {ACTIONS}")

    @property
    def enabled(self) -> bool:
        return self.passive is not None or bool(self.actions)

    def new_attempt(self) -> AttemptLiveness:
        return AttemptLiveness(self)


class AttemptLiveness:
    """One attempt's liveness: frame scores and the challenge in progress."""

    def __init__(self, gate: LivenessGate) -> None:
        self.gate = gate
        self.scores: list[float] = []
        self.challenge: Challenge | None = None
        if gate.actions:
            # The sequence and every prompt's moment come from the OS CSPRNG; the
            # challenge prompts each step itself, when its random moment comes.
            steps = draw_sequence(gate.actions, gate.challenge.steps)
            self.challenge = Challenge(steps, gate.challenge, prompt=gate.prompt)
            gate.prompt(f"please {PROMPTS['back']}")

    def add(self, t: float, frame: np.ndarray, face: Face) -> None:
        """Score one frame of the attempt and feed it to the challenge."""
        if self.gate.passive is not None:
            self.scores.append(self.gate.passive.score(frame, face))
        if self.challenge is not None:
            self.challenge.add(t, frame, face)

    @property
    def ready(self) -> bool:
        """Whether the attempt may close: its challenge (if any) is decided."""
        return self.challenge is None or self.challenge.verdict is not None

    def verdict(self) -> tuple[bool, str, auth_pb2.LivenessEvidence]:
        """Return (live, reason, evidence for the service) once the attempt has closed."""
        methods, reasons, live = [], [], True
        ev = auth_pb2.LivenessEvidence(score=1.0, threshold=1.0)
        passive = self.gate.passive
        if passive is not None:
            res = passive.result(self.scores)
            methods.append(res.method)
            ev.score, ev.threshold = res.score, res.threshold
            ev.model_version, ev.views_scored = res.model_version, res.frames
            live &= res.passed
            if not res.passed:
                reasons.append(res.reason())
        if self.challenge is not None:
            methods.append(ACTIVE)
            ev.challenge = self.challenge.action  # the sequence, e.g. "turn_left,turn_right"
            outcome = self.challenge.finish()
            live &= outcome == "passed"
            if outcome != "passed":
                reasons.append(outcome)
        ev.method, ev.passed = "+".join(methods), live
        reason = "; ".join(reasons) if reasons else "live"
        return live, reason, ev
