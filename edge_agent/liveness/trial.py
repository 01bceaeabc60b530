"""Liveness trials at a door: the door's own gate, run N times on one camera, measured.

Each trial is one attempt of the door's :class:`LivenessGate` (the same challenge and
passive checks ``kfaar edge run`` applies), fed the camera's frames with their times until
it is decided; then a pause, and the next. A trial keeps numbers only: per frame its time,
YuNet's five points, the challenge's parallax, step and phase; per step when the prompts
came and when the head reacted. Frames are written only where ``save_frames`` is given.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from edge_agent.capture import PromptedSource, TimedFrame
from edge_agent.face.detect import Face, FaceDetector, NoFaceError
from edge_agent.liveness.challenge import Challenge, parallax
from edge_agent.liveness.gate import AttemptLiveness, LivenessGate

log = logging.getLogger(__name__)

_STEP = re.compile(r"^challenge failed( at step \d+)?: ")


def failure_key(challenge: str | None, passive: dict | None) -> str | None:
    """Name why a trial failed, without its step number: the key failures are counted by."""
    parts = []
    if challenge is not None and challenge != "passed":
        parts.append(_STEP.sub("", challenge))
    if passive is not None and not passive["passed"]:
        parts.append("passive: " + ("no frame scored" if not passive["frames"] else
                                    "presentation attack suspected"))  # fmt: skip
    return " + ".join(parts) or None


def _first(ts: list[float], vals: list[float], since: float, test) -> float | None:
    """Seconds from ``since`` to the first frame at or after it whose value passes ``test``."""
    for t, v in zip(ts, vals, strict=True):
        if t >= since and test(v):
            return round(t - since, 3)
    return None


def step_timings(ch: Challenge, timeline: dict) -> list[dict]:
    """Per step: when its prompts came, when the head reacted and how far it turned.

    Motion is read as the challenge reads it: parallax toward the asked side, from the
    median of the step's resting frames (those the challenge saw before its prompt).
    """
    cfg, out = ch.cfg, []
    seen = [i for i, p in enumerate(timeline["parallax"]) if p is not None]
    ts = [timeline["t"][i] for i in seen]
    par = [timeline["parallax"][i] for i in seen]
    steps = [timeline["step"][i] for i in seen]
    phases = [timeline["phase"][i] for i in seen]
    prompts = [(round(t - (ch.started or 0.0), 3), k) for t, k in ch.log]
    for s, action in enumerate(ch.actions or ()):
        if len(prompts) <= 2 * s:
            break  # the attempt ended before this step's prompt (the log: turn, back, ...)
        at = prompts[2 * s][0]
        rest = [p for p, st, ph in zip(par, steps, phases, strict=True) if st == s and ph == "wait"]
        base = float(np.median(rest)) if rest else 0.0
        sign = 1.0 if action == "turn_left" else -1.0
        rel = [sign * (p - base) for p in par]
        back = prompts[2 * s + 1][0] if len(prompts) > 2 * s + 1 else None
        during = [r for t, r in zip(ts, rel, strict=True) if at <= t < (back or float("inf"))]
        row = {
            "action": action,
            "prompt_at_s": at,
            "onset_after_s": _first(ts, rel, at, lambda r: r > cfg.early),
            "reached_after_s": _first(ts, rel, at, lambda r: r >= cfg.turn),
            "peak": round(max(during), 4) + 0.0 if during else None,  # + 0.0: never -0.0
            "back_prompt_at_s": back,
            "back_onset_after_s": None,
            "back_after_s": None,
        }
        if back is not None:
            held = next((r for t, r in zip(ts, rel, strict=True) if t >= back), None)
            if held is not None:  # the return starts when the head leaves where it held
                left = partial(operator.gt, held - cfg.early)  # left(r): r < held - early
                row["back_onset_after_s"] = _first(ts, rel, back, left)
            row["back_after_s"] = _first(ts, rel, back, lambda r: abs(r) <= cfg.neutral)
        out.append(row)
    return out


def check_settings(trials: int, pause_s: float) -> None:
    """Refuse a run that cannot measure anything: no trials, or a negative pause."""
    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    if not pause_s >= 0:  # NaN too
        raise ValueError(f"--pause must be zero or more seconds, got {pause_s}")


class _Trial:
    """One trial in progress: the gate's attempt, and its timeline as numbers."""

    def __init__(self, index: int, attempt: AttemptLiveness) -> None:
        self.index, self.attempt = index, attempt
        self.started_utc = ""
        self.source_s: float | None = None
        self.timeline: dict[str, list] = {k: [] for k in ("t", "parallax", "landmarks",
                                                          "step", "phase")}  # fmt: skip

    @property
    def challenge(self) -> Challenge:
        return self.attempt.challenge  # type: ignore[return-value]

    def add(self, t: float, frame: np.ndarray, face: Face | None) -> bool:
        """Feed one frame (``face`` None: none found); return whether the trial is decided."""
        ch = self.challenge
        if face is not None:
            self.attempt.add(t, frame, face)
        elif ch.started is None:
            return False  # the trial starts with the first face
        if self.source_s is None:  # the first face: the challenge's clock starts
            self.source_s = ch.started
            self.started_utc = datetime.now(UTC).isoformat(timespec="seconds")
        rel = round(t - ch.started, 3)  # type: ignore[operator]
        tl = self.timeline
        tl["t"].append(rel)
        if face is None:
            tl["parallax"].append(None)
            tl["landmarks"].append(None)
        else:
            tl["parallax"].append(round(parallax(ch.reference, face.landmarks), 4))
            tl["landmarks"].append(np.round(np.asarray(face.landmarks, float), 1).tolist())
        tl["step"].append(ch.step)
        tl["phase"].append(ch.phase if ch.verdict is None else "decided")
        return self.attempt.ready or rel > ch.cfg.time_limit_s

    def record(self) -> dict:
        """Decide the attempt as the door would and describe the trial."""
        ch = self.challenge
        live, reason, _evidence = self.attempt.verdict()
        passive, pad = None, self.attempt.gate.passive
        if pad is not None:
            res = pad.result(self.attempt.scores)
            passive = {"score": round(res.score, 4), "threshold": round(res.threshold, 4),
                       "frames": res.frames, "passed": res.passed}  # fmt: skip
        tl = self.timeline
        return {
            "index": self.index,
            "outcome": "pass" if live else "fail",
            "reason": reason,
            "failure": failure_key(ch.verdict, passive),
            "challenge": ch.verdict,
            "passive": passive,
            "sequence": list(ch.actions or ()),
            "started_utc": self.started_utc,
            "source_s": None if self.source_s is None else round(self.source_s, 3),
            "duration_s": tl["t"][-1] if tl["t"] else 0.0,
            "frames": len(tl["t"]),
            "frames_without_face": sum(p is None for p in tl["parallax"]),
            "prompts": [[round(t - (ch.started or 0.0), 3), k] for t, k in ch.log],
            "steps": step_timings(ch, tl),
            "timeline": tl,
        }


@dataclasses.dataclass
class TrialRun:
    """What a run gives: the decided trials, and how it ended."""

    trials: list[dict] = dataclasses.field(default_factory=list)
    ended: str = "done"  # done, or why fewer trials than asked were decided
    incomplete: int = 0  # a trial cut short by the end of the source (not counted)


class TrialRunner:
    """Run ``trials`` attempts of ``gate`` over a source of timed frames.

    ``say`` gets each prompt as a line (trial, time); ``progress`` each decided trial's
    record; ``show`` (optional) each frame with the prompt to draw on it.
    """

    def __init__(
        self,
        gate: LivenessGate,
        trials: int,
        pause_s: float = 3.0,
        detector: FaceDetector | None = None,
        say: Callable[[str], object] = log.info,
        progress: Callable[[dict], object] = lambda _rec: None,
        show: Callable[[np.ndarray, str], object] | None = None,
        save_frames: Path | None = None,
    ) -> None:
        if not gate.actions:
            raise ValueError("the trial measures the active challenge: turn it on (--challenge)")
        check_settings(trials, pause_s)
        self.gate = dataclasses.replace(gate, prompt=self._prompt)  # the door's checks, our voice
        self.n, self.pause_s = trials, pause_s
        self.detector = detector or FaceDetector()
        self.say, self.progress, self.show = say, progress, show
        self.save_frames = save_frames
        self.run_state = TrialRun()
        self._listener: Callable[[str], object] | None = None
        self._current: _Trial | None = None
        self._now, self._text = 0.0, ""  # the run's time (from its first frame), the prompt

    def _prompt(self, text: str) -> None:
        self._text = text
        k = self._current.index if self._current else len(self.run_state.trials) + 1
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        self.say(f"{stamp} trial {k}/{self.n} t={self._now:.2f}s: {text}")
        if self._listener is not None:
            self._listener(text)

    def _save(self, trial: _Trial, frame: np.ndarray) -> None:
        folder = self.save_frames / f"trial_{trial.index:03d}"  # type: ignore[operator]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{len(trial.timeline['t']):05d}.jpg"), frame)

    def run(self, source: Iterable[TimedFrame]) -> TrialRun:
        """Run the trials; the record so far stays in ``run_state`` if interrupted."""
        self._listener = source.prompted if isinstance(source, PromptedSource) else None
        done, resume_at, t0 = self.run_state.trials, 0.0, None
        for _label, t, frame in source:
            t0 = t if t0 is None else t0
            self._now = t - t0
            if self._current is None:
                if len(done) == self.n:
                    break
                # The attempt opens now ("please face the camera") and counts after the pause.
                self._current = _Trial(len(done) + 1, self.gate.new_attempt())
                resume_at = t + (self.pause_s if done else 0.0)
            if self.show is not None:
                self.show(frame, self._text)
            if t < resume_at:
                continue
            try:
                face = self.detector.primary(frame)
            except NoFaceError:
                face = None
            trial = self._current
            if self.save_frames is not None and (face is not None or trial.source_s is not None):
                self._save(trial, frame)
            if trial.add(t, frame, face):
                rec = trial.record()
                done.append(rec)
                self._current, self._text = None, ""
                self.progress(rec)
        if self._current is not None:
            self.run_state.incomplete = int(self._current.source_s is not None)
            self._current = None
        if len(done) < self.n:
            self.run_state.ended = f"the source ended after {len(done)} of {self.n} trials"
        return self.run_state
