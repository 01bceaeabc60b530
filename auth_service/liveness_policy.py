"""Liveness policy: scopes that refuse Verify and Identify without a live presentation.

A door's scope can require liveness (``kfaar serve --require-liveness SCOPE`` or
``$KFAAR_REQUIRE_LIVENESS=hq,lobby``). There, a probe must carry the edge's
``LivenessEvidence`` (signed with the rest of the request) saying the attempt passed, by
an allowed method, at a threshold no lower than the service's floor for that method; a
device may not lower the bar by declaring a lax threshold. A scope may also name the
methods it needs (``SCOPE:active``, ``SCOPE:passive``, ``SCOPE:both``): passive PAD alone
let most real phone replays through (docs/LIVENESS.md), so a door that must stop them
requires the timed challenge, with at least ``min_steps`` steps. Each refusal is audited
with its reason. What this cannot stop (a device that lies) is in docs/SECURITY.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from auth_service.policy import RequestError
from auth_service.refusals import quoted
from kfaar_pb.v1 import auth_pb2

log = logging.getLogger(__name__)

REQUIRE_ENV = "KFAAR_REQUIRE_LIVENESS"
ACTIVE = "active-challenge"  # a random action checked on the edge; it has no score
# The lowest threshold the service accepts per scored method: a device declaring a lower
# one is refused. Passive: at most the shipped MiniFASNet pair's threshold (0.327 in its
# manifest.json), so that the edge's default passes and a lax edge does not.
DEFAULT_FLOORS = {"passive-minifasnet": 0.3}
MODES = ("any", "passive", "active", "both")
TURNS = frozenset({"turn_left", "turn_right"})  # the steps an edge's challenge can ask
# Fewest challenge steps a scope requiring the active method accepts: a replay that ignores
# the prompts passes 3 steps with an estimated chance of 0.4% (docs/LIVENESS.md).
DEFAULT_MIN_STEPS = 3


def parse_scope(spec: str) -> tuple[str, str]:
    """Split ``SCOPE`` or ``SCOPE:MODE`` into (scope, mode); raise ValueError on a bad one."""
    scope, _, mode = spec.strip().partition(":")
    mode = mode or "any"
    if not scope or mode not in MODES:
        raise ValueError(f"liveness scope {spec!r}: use SCOPE or SCOPE:MODE, MODE one of {MODES}")
    return scope, mode


@dataclass(frozen=True)
class LivenessPolicy:
    require: frozenset[str] = frozenset()  # scopes where a probe needs passed liveness
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FLOORS))
    modes: dict[str, str] = field(default_factory=dict)  # scope -> MODES entry; absent: any
    min_steps: int = DEFAULT_MIN_STEPS

    @classmethod
    def from_env(cls, extra: list[str] | tuple[str, ...] = ()) -> LivenessPolicy:
        """Scopes from ``$KFAAR_REQUIRE_LIVENESS`` (comma-separated) plus ``extra``."""
        env = [s.strip() for s in os.environ.get(REQUIRE_ENV, "").split(",") if s.strip()]
        parsed = [parse_scope(spec) for spec in [*env, *extra]]
        modes = {scope: mode for scope, mode in parsed if mode != "any"}
        return cls(frozenset(scope for scope, _ in parsed), modes=modes)

    def refusal(self, scope: str, req: auth_pb2.VerifyRequest | auth_pb2.IdentifyRequest):
        """Return why ``req`` fails this scope's liveness rule, or None when it passes."""
        if scope not in self.require:
            return None
        if not req.HasField("liveness"):
            return "no liveness evidence"
        ev = req.liveness
        methods = [m for m in ev.method.split("+") if m]
        unknown = [m for m in methods if m not in self.floors and m != ACTIVE]
        if not methods or unknown:
            return f"unknown liveness method {quoted(ev.method)}"
        if not ev.passed:
            return f"attempt not live ({ev.method[:64]} score {ev.score:.2f})"
        if ACTIVE in methods and not ev.challenge:
            return "active challenge claimed without naming the action asked"
        if ev.score < ev.threshold:
            return f"score {ev.score:.2f} below its threshold {ev.threshold:.2f}"
        floor = max((self.floors[m] for m in methods if m != ACTIVE), default=0.0)
        if ev.threshold < floor:
            return f"threshold {ev.threshold:.2f} below the service's floor {floor:.2f}"
        return self._mode_refusal(self.modes.get(scope, "any"), methods, ev.challenge)

    def _mode_refusal(self, mode: str, methods: list[str], challenge: str) -> str | None:
        """Return why the methods miss what the scope's mode needs, or None."""
        if mode in ("passive", "both") and not any(m in self.floors for m in methods):
            return f"scope requires passive PAD, got {quoted('+'.join(methods))}"
        if mode in ("active", "both"):
            if ACTIVE not in methods:
                return f"scope requires the active challenge, got {quoted('+'.join(methods))}"
            steps = [a for a in challenge.split(",") if a]
            if any(a not in TURNS for a in steps):
                return f"unknown challenge steps in {quoted(challenge)}"
            if len(steps) < self.min_steps:
                return f"challenge of {len(steps)} step(s), scope requires {self.min_steps}"
        return None

    def check(self, scope: str, req, audit: Callable[[str], object]) -> None:
        """Refuse (FAILED_PRECONDITION) a probe that fails the rule; audit the reason."""
        why = self.refusal(scope, req)
        if why is None:
            return
        audit(f"refused: liveness: {why}")
        log.info("liveness required in scope %r: %s", scope, why)
        msg = f"liveness required in scope {scope!r}: {why}"
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, msg, audited=True)
