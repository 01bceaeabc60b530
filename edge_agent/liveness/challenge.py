"""Active liveness: a random sequence of timed head turns, checked from YuNet's five points.

The door draws a short sequence of steps (turn left / turn right), each with the OS CSPRNG
(``secrets``), and a random moment for every prompt. One step:

1. wait: the head rests near its neutral pose; the prompt comes at a random delay (any
   turn before it fails the attempt: a replay cannot start early);
2. "turn your head to your <side>": the turn must start no sooner than ``min_react_s``
   after the prompt (nobody reacts faster) and reach ``turn`` eye spans within
   ``max_react_s``, held ``hold`` frames; a turn the other way fails;
3. the head holds the turn until "face the camera" comes, again at a random delay;
   returning before it fails; it must be back near neutral within ``max_react_s``.

A replay that does not follow the prompts must guess each step's side and land each of its
motions inside a reaction window placed at random: see :func:`replay_pass_chance`.

The measure (``parallax``) is why a flat picture never passes: four points fix the
homography a flat picture's motion would be, and the nose's offset beyond it is depth,
which a picture has none of. ``turn_left`` is the subject's own left: the nose moves
toward the image's right on an unmirrored camera.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_agent.face.detect import Face

ACTIONS = ("turn_left", "turn_right")
DEFAULT_ACTIONS = ACTIONS
PROMPTS = {
    "turn_left": "turn your head to your left",
    "turn_right": "turn your head to your right",
    "back": "face the camera",
}


@dataclass(frozen=True)
class ChallengeConfig:
    steps: int = 3  # prompts in one attempt's sequence
    step_time_s: float = 8.0  # the attempt's time limit is steps * this + 2 s
    turn: float = 0.12  # nose parallax, in eye spans, that counts as a turn (~15 degrees)
    early: float = 0.07  # this much motion before a prompt (or the other way) fails
    neutral: float = 0.06  # back within this of the neutral pose counts as facing the camera
    hold: int = 2  # consecutive frames the turn must show
    baseline_frames: int = 2  # frames before the first prompt that fix the neutral pose
    delay_s: tuple[float, float] = (0.3, 2.0)  # random wait before each prompt
    min_react_s: float = 0.15  # motion sooner than this after a prompt is not a reaction
    max_react_s: float = 2.0  # the motion must be complete this long after its prompt
    onset_s: float = 1.0  # and must have started within this

    @property
    def time_limit_s(self) -> float:
        return self.steps * self.step_time_s + 2.0


def draw_sequence(actions: tuple[str, ...] = ACTIONS, steps: int = 3, rng=None) -> list[str]:
    """Return ``steps`` actions drawn independently (CSPRNG unless ``rng`` is given)."""
    rng = rng or secrets.SystemRandom()
    return [rng.choice(actions) for _ in range(steps)]


def draw_action(actions: tuple[str, ...] = ACTIONS) -> str:
    """Return one random action from the OS CSPRNG."""
    return secrets.choice(actions)


def replay_pass_chance(cfg: ChallengeConfig, n_actions: int = 2) -> float:
    """Upper estimate of the chance a fixed replay that ignores the prompts passes.

    Per step the replay must show the drawn side (1 / n_actions), and both its turn and its
    return must start inside a reaction window of ``onset_s - min_react_s`` seconds that
    the random prompt delay (``delay_s`` wide) places; one frame's slack (0.1 s) is added.
    """
    width = cfg.delay_s[1] - cfg.delay_s[0]
    timing = min(1.0, (cfg.onset_s - cfg.min_react_s + 0.1) / width)
    return float((timing * timing / n_actions) ** cfg.steps)


def parallax(reference: np.ndarray, landmarks: np.ndarray) -> float:
    """Return the nose's shift beyond a flat picture's motion, in eye spans.

    The eyes and the mouth corners fix a homography from the reference frame to this one,
    exactly the motion a flat picture can make, perspective included; the nose's distance
    from where a flat face would put it, along the eye line, is the turn (positive: toward
    the image's right, the subject's own left).
    """
    ref, cur = np.asarray(reference, np.float32), np.asarray(landmarks, np.float32)
    eye = cur[1] - cur[0]
    span = float(np.linalg.norm(eye))
    if span < 1e-3:
        return 0.0
    try:
        h = cv2.getPerspectiveTransform(ref[[0, 1, 3, 4]], cur[[0, 1, 3, 4]])
    except cv2.error:  # degenerate (collinear) points
        return 0.0
    nose = cv2.perspectiveTransform(ref[None, 2:3], h)[0, 0]
    return float((cur[2] - nose) @ (eye / span) / span)


@dataclass
class Challenge:
    """One challenge in progress: feed it the tracked face's frames with their times.

    ``actions`` is the sequence (drawn at random unless given); ``rng`` draws the prompt
    delays (the OS CSPRNG unless given: benchmarks and tests pass a seeded one);
    ``prompt`` tells the person each step.
    """

    actions: list[str] | None = None
    cfg: ChallengeConfig = field(default_factory=ChallengeConfig)
    rng: random.Random | None = None
    prompt: Callable[[str], object] = lambda _text: None
    verdict: str | None = None  # None while undecided; "passed" or a refusal
    log: list[tuple[float, str]] = field(default_factory=list)  # (t, prompt) as shown

    def __post_init__(self) -> None:
        self.rng = self.rng or secrets.SystemRandom()
        if self.actions is None:
            self.actions = draw_sequence(ACTIONS, self.cfg.steps, self.rng)
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad or not self.actions:
            raise ValueError(f"actions must be a non-empty list of {ACTIONS}, got {self.actions}")
        self.started: float | None = None
        self.reference: np.ndarray | None = None  # (5, 2) landmarks of the first frame
        self.step, self.phase = 0, "wait"  # phases: wait, turn, hold, back
        self.base: list[float] = []  # neutral turn values seen in this step's wait
        self.due: float | None = None  # when the next prompt is shown
        self.since = 0.0  # when the current phase began (its prompt, or the turn reached)
        self.run = 0  # consecutive frames meeting the current target
        self.now = 0.0  # the latest frame's time

    @property
    def action(self) -> str:
        """The sequence as sent to the service, e.g. ``turn_left,turn_right``."""
        return ",".join(self.actions or ())

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def add(self, t: float, image: np.ndarray, face: Face) -> str | None:
        """Add one frame at time ``t`` (seconds); return the verdict once decided."""
        if self.verdict is not None:
            return self.verdict
        if self.started is None:
            self.started, self.reference = t, np.asarray(face.landmarks, np.float32)
        if t - self.started > self.cfg.time_limit_s:
            return self._fail("time is up")
        self.now = t
        self._frame(t, parallax(self.reference, face.landmarks))
        return self.verdict

    def finish(self) -> str:
        """The source ended or the time is up: decide with what was seen."""
        if self.verdict is None:
            what = "too few frames" if not self.base and self.step == 0 else "time is up"
            self._fail(what)
        return self.verdict  # type: ignore[return-value]

    def _fail(self, why: str) -> str:
        step = f" at step {self.step + 1}" if self.started is not None else ""
        self.verdict = f"challenge failed{step}: {why}"
        return self.verdict

    def _show(self, t: float, key: str) -> None:
        self.log.append((t, key))
        self.prompt(f"please {PROMPTS[key]}")

    def _delay(self) -> float:
        lo, hi = self.cfg.delay_s
        return lo + (hi - lo) * self.rng.random()  # type: ignore[union-attr]

    def _frame(self, t: float, turn: float) -> None:
        cfg, want = self.cfg, self.actions[self.step]  # type: ignore[index]
        base = float(np.median(self.base)) if self.base else turn
        rel = turn - base
        sign = 1.0 if want == "turn_left" else -1.0
        if self.phase == "wait":
            if self.base and abs(rel) > cfg.early:
                self._fail("moved before the prompt")
                return
            self.base.append(turn)
            if self.due is None and len(self.base) >= cfg.baseline_frames:
                self.due = t + self._delay()
            if self.due is not None and t >= self.due:
                self.phase, self.since, self.run = "turn", t, 0
                self._show(t, want)
            return
        dt = t - self.since
        if self.phase == "turn":
            if sign * rel < -cfg.early:
                self._fail("turned the wrong way")
            elif dt < cfg.min_react_s and sign * rel > cfg.early:
                self._fail("moved before the prompt")
            elif dt > cfg.onset_s and sign * rel < cfg.early:
                self._fail(f"no reaction to {PROMPTS[want]!r}")
            else:
                self.run = self.run + 1 if sign * rel >= cfg.turn else 0
                if self.run >= cfg.hold:
                    self.phase, self.since, self.due = "hold", t, t + self._delay()
                elif dt > cfg.max_react_s:
                    self._fail(f"{PROMPTS[want]!r} not seen")
            return
        if self.phase == "hold":
            if sign * rel < cfg.early:
                self._fail("came back before the prompt")
            elif t >= self.due:  # type: ignore[operator]
                self.phase, self.since = "back", t
                self._show(t, "back")
            return
        # back: still turned for the first moment, then near neutral soon enough
        if dt < cfg.min_react_s and sign * rel < cfg.early:
            self._fail("came back before the prompt")
        elif abs(rel) <= cfg.neutral:
            self.step += 1
            if self.step == len(self.actions):  # type: ignore[arg-type]
                self.verdict = "passed"
            else:
                self.phase, self.base, self.due = "wait", [turn], t + self._delay()
        elif dt > cfg.onset_s and sign * rel >= cfg.turn:
            self._fail(f"no reaction to {PROMPTS['back']!r}")
        elif dt > cfg.max_react_s:
            self._fail("did not face the camera again")
