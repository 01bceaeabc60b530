"""``kfaar demo``'s presentation attacks: a print, a screen replay and a still photo.

All three use a held-out photo of an enrolled person claiming that same person, so the
identity check alone would let them in; the liveness gate must refuse them. The print and
the screen are simulated from the sample photo (edge_agent/liveness/attacks.py), and
labelled so; the still photo is moved by hand in front of a door that asks for a random
sequence of timed head turns (the door's challenge).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.liveness.attacks import hand_moved, simulate
from edge_agent.liveness.challenge import DEFAULT_ACTIONS
from edge_agent.liveness.gate import LivenessGate
from edge_agent.liveness.pad import PassiveLiveness

FPS = 8.0
NOTE = "(sim): simulated from the sample photo (edge_agent/liveness/attacks.py), not real"


def _attempt(gate: LivenessGate, frames: list[np.ndarray], det: FaceDetector) -> tuple[int, str]:
    """Feed the frames to one attempt's liveness; return (frames with a face, reason)."""
    state, used = gate.new_attempt(), 0
    for i, frame in enumerate(frames):
        try:
            face = det.primary(frame)
        except NoFaceError:
            continue
        used += 1
        state.add(i / FPS, frame, face)
    live, why, _ = state.verdict()
    return used, ("accepted by liveness: " if live else "rejected: ") + why


def presentation_attacks(
    person: str, photo: np.ndarray, det: FaceDetector, out: Path, seed: int = 21
) -> list[dict]:
    """Run the three attacks on ``person``'s photo; return one table row per attempt."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pad = PassiveLiveness()
    passive = LivenessGate(pad)
    attempts = [
        ("print (sim)", passive, [simulate("print", photo, rng) for _ in range(3)]),
        ("replay (sim)", passive, [simulate("screen", photo, rng) for _ in range(3)]),
        (
            "still photo",
            LivenessGate(pad, DEFAULT_ACTIONS, prompt=lambda _: None),
            hand_moved(photo, 32, rng),
        ),
    ]
    rows = []
    for n, (kind, gate, frames) in enumerate(attempts):
        used, reason = _attempt(gate, frames, det)
        cv2.imwrite(str(out / f"{n:02d}_{kind.split()[0]}.jpg"), frames[len(frames) // 2])
        rows.append({
            "person": person,
            "claims": person,
            "kind": kind,
            "frames": len(frames),
            "used": used,
            "accepted": reason.startswith("accepted"),
            "reason": reason,
        })  # fmt: skip
    return rows
