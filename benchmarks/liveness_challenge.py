"""Active challenge (timed turn sequence): cooperative, replay and still-photo pass rates.

Two protocols, reported separately. Labels come from dlib's 68 landmarks fitted by
solvePnP (head yaw), never from the five YuNet points the challenge reads.

video (``--video DIR``, real clips; benchmarks/liveness_video.py labels and caches them):
- cooperative: every labelled turn (rest, turn >= 15 degrees, come back) becomes a
  one-step attempt; the turn prompt is placed a reaction time (uniform 0.3-0.7 s) before
  the labelled onset and the "face the camera" prompt likewise before the labelled return.
  Multi-step attempts splice real turns of one clip. A placement the door could never draw
  (a delay outside ``delay_s``) is counted as not placeable, not as a pass or a failure.
- replay: each clip, looped from a random frame, against random schedules (seeded).
- stills: photos moved by hand (attacks.hand_moved), against random schedules.
photos (``--photos``): AT&T and LFW people; a "puppet" of two real photos (neutral,
turned by dlib's yaw) switched after a reaction time to each prompt; its recording is
then replayed against another schedule.

Run: python benchmarks/liveness_challenge.py --video CLIPS_DIR [--photos]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from liveness_video import FPS, Clip, clips_in, episodes, label, smooth_yaw

from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.liveness.attacks import hand_moved
from edge_agent.liveness.challenge import Challenge, ChallengeConfig, replay_pass_chance

BLANK = np.zeros((8, 8, 3), np.uint8)  # the challenge reads only the landmarks


class Scripted(Challenge):
    """A challenge whose random delays are replaced to put each prompt at a given time."""

    def __init__(self, actions: list[str], cfg: ChallengeConfig, at: list[float]) -> None:
        super().__init__(list(actions), cfg, rng=random.Random(0))
        self.at, self.unreal = list(at), 0

    def _delay(self) -> float:
        d = self.at.pop(0) - self.now if self.at else 1e9
        lo, hi = self.cfg.delay_s
        self.unreal += not lo - 0.05 <= d <= hi + 0.05  # a delay the door never draws
        return d


def _return_onset(y: np.ndarray, base: float, s: float, reach: int) -> int:
    """First frame after ``reach`` where the turn has eased 4 degrees from its peak."""
    top = -1e9
    for r in range(reach, len(y)):
        top = max(top, s * (y[r] - base))
        if s * (y[r] - base) <= top - 4:
            return r
    return len(y) - 1


def segment(clip: Clip, ep, rng) -> tuple[list[int], list[float]] | None:
    """Frames of one turn (with ~0.3-1 s of rest before its prompt) and its two prompts."""
    y, t = smooth_yaw(clip), clip.t
    base = float(np.median(y[ep.start : ep.start + 5]))
    s = 1.0 if ep.side == "turn_left" else -1.0
    onset = ep.onset  # the motion's first frame: back from 6 degrees while still >= 3
    while onset > ep.start and abs(y[onset - 1] - base) >= 3:
        onset -= 1
    tp = t[onset] - rng.uniform(0.3, 0.7)
    tb = t[_return_onset(y, base, s, ep.reach)] - rng.uniform(0.3, 0.7)
    # The attempt opens on any resting frame from which the door's first delay (drawn
    # once it has two frames) fits its range.
    firsts = [a for a in range(ep.start, onset) if tp - 2.0 <= t[a + 1] <= tp - 0.3]
    if not firsts or ep.back is None:
        return None
    first = firsts[int(rng.integers(len(firsts)))]
    end = min(len(clip), ep.back + 3)
    return list(range(first, end)), [tp, tb]


def play(ch: Challenge, clip: Clip, idx: list[int], times: list[float]) -> str:
    for i, t in zip(idx, times, strict=True):
        if ch.add(t, BLANK, clip.face(i)) is not None:
            break
    return ch.finish()


def _tally(res: dict, fails: dict, key: str, ch, out: str) -> None:
    """Count one cooperative attempt; a schedule the door would never draw is not placeable."""
    if ch.unreal:
        res[key][2] += 1
        return
    res[key][0] += out == "passed"
    res[key][1] += 1
    fails[out.split(": ", 1)[-1]] += out != "passed"


def cooperative_video(clips: list[Clip], cfg: ChallengeConfig, draws: int, rng) -> dict:
    """One-step attempts per labelled turn, and spliced three-step ones per clip."""
    res: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # passed, n, not placeable
    fails: dict[str, int] = defaultdict(int)
    for clip in clips:
        eps = [e for e in episodes(clip) if e.back is not None]
        for _ in range(draws):
            for ep in eps:
                seg = segment(clip, ep, rng)
                key = "cooperative, one step"
                if seg is None:
                    res[key][2] += 1
                    continue
                idx, at = seg
                ch = Scripted([ep.side], ChallengeConfig(**{**cfg.__dict__, "steps": 1}), at)
                _tally(res, fails, key, ch, play(ch, clip, idx, [clip.t[i] for i in idx]))
            if len(eps) < 2:
                continue
            # Three real turns of this clip spliced in time (the clip's camera is fixed).
            picks = [eps[rng.integers(len(eps))] for _ in range(3)]
            segs = [segment(clip, ep, rng) for ep in picks]
            key = f"cooperative, {cfg.steps} steps spliced"
            if any(sg is None for sg in segs):
                res[key][2] += 1
                continue
            idx, times, at, off = [], [], [], 0.0
            for (ix, (tp, tb)), _ep in zip(segs, picks, strict=True):  # type: ignore[misc]
                shift = off - clip.t[ix[0]]
                idx += ix
                times += [clip.t[i] + shift for i in ix]
                at += [tp + shift, tb + shift]
                off = times[-1] + 1.0 / FPS
            ch = Scripted([e.side for e in picks], cfg, at)
            _tally(res, fails, key, ch, play(ch, clip, idx, times))
    return {"counts": dict(res), "failures": dict(fails)}


def replays(clips: list[Clip], cfg: ChallengeConfig, seeds: int, rng) -> dict:
    """Each clip looped from a random frame, against ``seeds`` random schedules."""
    res: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for clip in clips:
        if len(clip) < 10:
            continue
        dur = clip.t[-1] + 1.0 / FPS
        for seed in range(seeds):
            start = int(rng.integers(len(clip) // 2))
            reps = int(cfg.time_limit_s / dur) + 2
            idx = (list(range(start, len(clip))) + list(range(len(clip))) * reps)[:400]
            times, t0, loop = [], clip.t[start], 0.0
            for k, i in enumerate(idx):
                if k and i < idx[k - 1]:
                    loop += dur
                times.append(clip.t[i] - t0 + loop)
            for steps in sorted({1, cfg.steps}):
                c = ChallengeConfig(**{**cfg.__dict__, "steps": steps})
                ch = Challenge(None, c, rng=random.Random(seed * 7919 + len(clip)))
                res[f"replay, {steps} step(s)"][0] += play(ch, clip, idx, times) == "passed"
                res[f"replay, {steps} step(s)"][1] += 1
    return dict(res)


def stills(photos: list[Path], cfg: ChallengeConfig, n: int, det, rng) -> dict:
    """Photos moved by hand for 8 s against random schedules."""
    res: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for k in range(n):
        im = load_image(photos[k % len(photos)])
        frames = hand_moved(im, int(8 * FPS), rng)
        for steps in sorted({1, cfg.steps}):
            ch = Challenge(None, ChallengeConfig(**{**cfg.__dict__, "steps": steps}),
                           rng=random.Random(k))  # fmt: skip
            for i, fr in enumerate(frames):
                try:
                    if ch.add(i / FPS, fr, det.primary(fr)) is not None:
                        break
                except NoFaceError:
                    continue
            res[f"still photo moved by hand, {steps} step(s)"][0] += ch.finish() == "passed"
            res[f"still photo moved by hand, {steps} step(s)"][1] += 1
    return dict(res)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", type=Path, default=None, help="folder of real head-motion clips")
    p.add_argument("--draws", type=int, default=5, help="reaction-time draws per labelled turn")
    p.add_argument("--seeds", type=int, default=8, help="random schedules per replayed clip")
    p.add_argument("--stills", type=int, default=100, help="still-photo attempts")
    p.add_argument("--photos", action="store_true", help="also run the AT&T/LFW photo protocol")
    p.add_argument("--lfw-people", type=int, default=40, help="LFW people with 8+ photos")
    p.add_argument("--out", type=Path, default=None, help="write the counts as JSON here")
    a = p.parse_args()
    cfg, rng, det = ChallengeConfig(), np.random.default_rng(21), FaceDetector()
    out: dict = {"config": {k: v for k, v in cfg.__dict__.items()},
                 "replay_pass_chance": {s: replay_pass_chance(ChallengeConfig(steps=s))
                                        for s in (1, 2, 3, 4)}}  # fmt: skip
    if a.video:
        from training.measure.head_pose import HeadPoseEstimator

        pose = HeadPoseEstimator()
        clips = [label(q, det, pose) for q in clips_in(a.video)]
        out["clips"] = {c.name: [len(c), len([e for e in episodes(c)])] for c in clips}
        out["video"] = cooperative_video(clips, cfg, a.draws, rng)
        out["replays"] = replays(clips, cfg, a.seeds, rng)
    from training.datasets import data_root

    pool = sorted((data_root() / "lfw").glob("*/*.jpg"))
    pool = [pool[i] for i in rng.permutation(len(pool))[: max(a.stills, 1)]]
    out["stills"] = stills(pool, cfg, a.stills, det, rng)
    if a.photos:
        from liveness_challenge_photos import photo_protocol

        out["photos"] = photo_protocol(cfg, a.lfw_people, det, rng)
    w = sys.stdout.write
    w("| attempts | passed / n | not placeable |\n|---|---|---|\n")
    for part in ("video", "replays", "stills", "photos"):
        sec = out.get(part, {})
        for what, v in sorted(sec.get("counts", sec).items()):
            if isinstance(v, list):
                extra = f" | {v[2]}" if len(v) > 2 else " | "
                w(f"| {part}: {what} | {v[0]}/{v[1]}{extra} |\n")
    w(f"analytic replay pass chance by steps: {out['replay_pass_chance']}\n")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
