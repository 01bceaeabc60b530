"""Active liveness: ask for a random action and check it from YuNet's five points.

The door asks for one action, drawn with a CSPRNG (``secrets``): turn the head left or
right, smile, or blink. It then watches one tracked face for ``time_limit_s``. The first
``baseline_frames`` frames set the person's neutral values; the action must then show.

The measures are chosen so that a flat photo cannot produce them by being moved
(``parallax``): four points fix the homography a flat picture's motion would be, and what
the fifth does beyond it is depth, which a picture has none of. A turn moves the nose,
which stands out of the face, sideways; a smile spreads the mouth corners. Blink: the
contrast of the eye regions of the aligned face over that of the nose-mouth region, so
blur and exposure changes that hit the whole face cancel.

A replayed video fails unless it happens to show the random action, and a turn the other
way fails the attempt, also within ``confirm_s`` after the asked one: a video sweeping the
head both ways does not pass. ``turn_left`` is the subject's own left: the nose moves
toward the image's right on an unmirrored camera.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_agent.face.align import ARCFACE_112, align
from edge_agent.face.detect import Face

ACTIONS = ("turn_left", "turn_right", "smile", "blink")
# Turns are what the measurements support (docs/LIVENESS.md); smile and blink are offered
# but did not pass cooperative people reliably on the photographs at hand.
DEFAULT_ACTIONS = ("turn_left", "turn_right")
PROMPTS = {
    "turn_left": "turn your head to your left",
    "turn_right": "turn your head to your right",
    "smile": "smile",
    "blink": "blink",
}


def draw_action(actions: tuple[str, ...] = ACTIONS) -> str:
    """Return a random action, from the OS CSPRNG (not guessable by a replay)."""
    return secrets.choice(actions)


@dataclass(frozen=True)
class ChallengeConfig:
    time_limit_s: float = 5.0
    baseline_frames: int = 2
    turn: float = 0.15  # nose parallax, in eye spans, that counts as a turn
    smile: float = 0.10  # mouth-corner spread beyond a flat face's, in eye spans
    blink: float = 0.55  # eye openness below this share of neutral is a closed eye
    hold: int = 3  # consecutive frames a turn or smile must show
    # After the action, watch this long for a turn the other way before passing: a replayed
    # video that sweeps left and right fails whichever way was asked.
    confirm_s: float = 1.0
    opposite: float = 0.09  # a turn the other way this large (held) already fails


def parallax(reference: np.ndarray, landmarks: np.ndarray) -> tuple[float, float]:
    """Return (nose shift, mouth widening) beyond a flat picture's motion, in eye spans.

    Turn: the eyes and the mouth corners fix a homography from the reference frame to this
    one, exactly the motion a flat picture can make, perspective included; the nose's
    distance from where a flat face would put it, along the eye line, is the turn
    (positive: toward the image's right, the subject's own left). Smile: the eyes and the
    mouth's midpoint fix an affine map (the nose would make it degenerate: it lies on the
    line from the eyes' midpoint to the mouth's), and the mouth corners' spread beyond
    their predicted places is the smile.
    """
    ref, cur = np.asarray(reference, np.float32), np.asarray(landmarks, np.float32)
    eye = cur[1] - cur[0]
    span = float(np.linalg.norm(eye))
    if span < 1e-3:
        return 0.0, 0.0
    u = eye / span
    try:
        h = cv2.getPerspectiveTransform(ref[[0, 1, 3, 4]], cur[[0, 1, 3, 4]])
        m = cv2.getAffineTransform(np.stack([ref[0], ref[1], (ref[3] + ref[4]) / 2]),
                                   np.stack([cur[0], cur[1], (cur[3] + cur[4]) / 2]))  # fmt: skip
    except cv2.error:  # degenerate (collinear) points
        return 0.0, 0.0
    nose = cv2.perspectiveTransform(ref[None, 2:3], h)[0, 0]
    corners = cv2.transform(ref[None, 3:5], m)[0]  # (2, 2) predicted mouth corners
    turn = float((cur[2] - nose) @ u / span)
    smile = float(((cur[4] - corners[1]) - (cur[3] - corners[0])) @ u / span)
    return turn, smile


# Regions of the 112x112 ArcFace chip (x0, y0, x1, y1): both eyes, and the nose-mouth
# block used to normalise their contrast.
EYES = ((26, 44, 52, 60), (60, 44, 86, 60))
REFERENCE = (40, 64, 72, 100)


def _contrast(gray: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    patch = gray[y0:y1, x0:x1]
    lo, hi = np.percentile(patch, (10, 90))
    return float(hi - lo)


def eye_openness(image: np.ndarray, face: Face) -> float:
    """Return the eyes' contrast relative to the nose-mouth region's (aligned face)."""
    chip = align(image, face.landmarks, ARCFACE_112).chip
    gray = cv2.cvtColor(chip, cv2.COLOR_BGR2GRAY).astype(np.float32)
    ref = max(_contrast(gray, REFERENCE), 1.0)
    return float(np.mean([_contrast(gray, box) for box in EYES]) / ref)


@dataclass
class Challenge:
    """One challenge in progress: feed it the tracked face's frames with their times."""

    action: str
    cfg: ChallengeConfig = field(default_factory=ChallengeConfig)
    started: float | None = None
    # (t, turn, smile, eye openness) per frame
    samples: list[tuple[float, float, float, float]] = field(default_factory=list)
    reference: np.ndarray | None = None  # (5, 2) landmarks of the first frame
    verdict: str | None = None  # None while undecided; "passed" or a refusal

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def add(self, t: float, image: np.ndarray, face: Face) -> str | None:
        """Add one frame at time ``t`` (seconds); return the verdict once decided."""
        if self.verdict is not None:
            return self.verdict
        if self.started is None:
            self.started = t
        if t - self.started > self.cfg.time_limit_s:
            return self._decide(final=True)
        if self.reference is None:
            self.reference = np.asarray(face.landmarks, np.float32)
        a, c = parallax(self.reference, face.landmarks)
        openness = eye_openness(image, face) if self.action == "blink" else 0.0
        self.samples.append((t, a, c, openness))
        return self._decide(final=False)

    def finish(self) -> str:
        """The source ended or the time is up: decide with what was seen."""
        return self.verdict or self._decide(final=True)

    def _decide(self, final: bool) -> str | None:
        n, cfg = self.cfg.baseline_frames, self.cfg
        s = np.asarray(self.samples, np.float64).reshape(-1, 4)
        if len(s) <= n:
            if final:
                self.verdict = "challenge failed: too few frames"
            return self.verdict
        base, after = s[:n].mean(0), s[n:]
        turn, smile = after[:, 1] - base[1], after[:, 2] - base[2]
        closed = after[:, 3] / base[3] <= cfg.blink if base[3] > 0 else np.zeros(len(after), bool)
        seen = {  # the index in ``after`` where each action was first held, or None
            "turn_left": _held(turn >= cfg.turn, cfg.hold),
            "turn_right": _held(turn <= -cfg.turn, cfg.hold),
            "smile": _held(smile >= cfg.smile, cfg.hold),
            "blink": _held(closed, 1),
        }
        contrary = {  # a smaller turn the other way than counts as a turn
            "turn_left": _held(turn <= -cfg.opposite, cfg.hold),
            "turn_right": _held(turn >= cfg.opposite, cfg.hold),
        }
        hit = seen[self.action]
        if contrary.get(self.action) is not None:
            # Any turn the other way fails: a replay sweeping both ways must not pass.
            self.verdict = "challenge failed: turned the wrong way"
        elif hit is not None and (final or after[-1, 0] - after[hit, 0] >= cfg.confirm_s):
            self.verdict = "passed"
        elif final:
            self.verdict = f"challenge failed: {PROMPTS[self.action]!r} not seen"
        return self.verdict


def _held(hits: np.ndarray, k: int) -> int | None:
    """Return the index where ``hits`` completes ``k`` consecutive True values, or None."""
    run = 0
    for i, h in enumerate(hits):
        run = run + 1 if h else 0
        if run >= k:
            return i
    return None
