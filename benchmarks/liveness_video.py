"""Real head-motion video for the challenge benchmark: load, label, find the motions.

Clips are read at the door's frame rate (``FPS``), every frame with a face keeps YuNet's
five points and box (what the challenge reads) and, as the independent label, the head
yaw and pitch from dlib's 68 landmarks fitted by solvePnP (training/measure/head_pose.py).
Labels are cached beside the clips (``<clip>.labels.npz``); the media never enter the
repository (docs/LIVENESS.md, "Real video", says where to get them).

Run: python benchmarks/liveness_video.py DIR   (labels every clip, prints their motions)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.face.detect import Face, FaceDetector, NoFaceError

FPS = 10.0  # frames a second the door processes (YuNet + PAD on two cores)
VIDEO_EXT = (".mp4", ".gif", ".avi", ".mov", ".webm", ".3gp")


@dataclass
class Clip:
    """One labelled clip: per kept frame its time, YuNet face and dlib pose."""

    name: str
    t: np.ndarray  # (n,) seconds from the clip's start
    landmarks: np.ndarray  # (n, 5, 2) YuNet's points
    boxes: np.ndarray  # (n, 4) x, y, w, h
    yaw: np.ndarray  # (n,) degrees, > 0: the subject's own left (dlib + solvePnP)
    pitch: np.ndarray  # (n,) degrees, > 0: looking up

    def face(self, i: int) -> Face:
        """Return frame ``i``'s face as the detector gave it."""
        return Face(tuple(self.boxes[i]), self.landmarks[i], 1.0)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.t)


def read_frames(path: Path, fps: float = FPS):
    """Yield (t, BGR frame) from a video file, resampled to about ``fps``."""
    cap = cv2.VideoCapture(str(path))
    src = cap.get(cv2.CAP_PROP_FPS) or fps
    src = src if 1 <= src <= 120 else fps
    k, nxt = 0, 0.0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        t = k / src
        k += 1
        if t + 1e-6 >= nxt:
            nxt += 1.0 / fps
            yield t, frame
    cap.release()


def label(path: Path, det: FaceDetector, pose_est, fps: float = FPS) -> Clip:
    """Detect and label every frame of ``path`` (cached in ``<path>.labels.npz``)."""
    cache = path.with_name(path.name + ".labels.npz")
    if cache.exists():
        z = np.load(cache)
        return Clip(path.name, z["t"], z["landmarks"], z["boxes"], z["yaw"], z["pitch"])
    from training.measure.head_pose import estimate_pose

    rows = []
    for t, frame in read_frames(path, fps):
        try:
            face = det.primary(frame)
        except NoFaceError:
            continue
        lm = pose_est.landmarker.landmarks(frame, face.int_box())
        pose = estimate_pose(lm, frame.shape[:2])
        rows.append((t, face.landmarks, face.box, pose.yaw, pose.pitch))
    t = np.array([r[0] for r in rows], np.float64)
    clip = Clip(
        path.name,
        t,
        np.array([r[1] for r in rows], np.float32).reshape(-1, 5, 2),
        np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[3] for r in rows], np.float64),
        np.array([r[4] for r in rows], np.float64),
    )
    np.savez(cache, t=clip.t, landmarks=clip.landmarks, boxes=clip.boxes, yaw=clip.yaw,
             pitch=clip.pitch)  # fmt: skip
    return clip


def smooth_yaw(clip: Clip) -> np.ndarray:
    """Return dlib's yaw with a 3-frame running median (single-frame fit outliers out)."""
    y = clip.yaw
    return np.array([np.median(y[max(0, i - 1) : i + 2]) for i in range(len(y))])


@dataclass(frozen=True)
class Episode:
    """A labelled turn: frame indices of rest start, motion onset, turn reached, back."""

    clip: str
    start: int  # first of >= 5 resting frames
    onset: int  # first frame >= ``rest`` degrees from the resting yaw
    reach: int  # first frame >= ``turn`` degrees from it
    back: int | None  # first frame within ``rest`` degrees again (None: the clip ended)
    side: str  # turn_left (yaw up: the subject's own left) or turn_right
    peak: float  # the largest yaw change, degrees


def episodes(clip: Clip, turn: float = 15.0, rest: float = 6.0) -> list[Episode]:
    """Find head turns by dlib's yaw: rest, leave it by ``turn`` degrees, come back."""
    y, t, n, out, i = smooth_yaw(clip), clip.t, len(clip), [], 0
    while i < n - 5:
        base = float(np.median(y[i : i + 5]))
        steady = np.all(np.abs(y[i : i + 5] - base) < rest / 2) and np.all(
            np.diff(t[i : i + 5]) < 0.25
        )
        if not steady:
            i += 1
            continue
        j = i + 5
        while j < n and abs(y[j] - base) < rest:
            j += 1
        if j >= n:
            break
        s = float(np.sign(y[j] - base))
        k = j
        while k < n and k - j < 30 and rest <= s * (y[k] - base) < turn:
            k += 1
        if k < n and s * (y[k] - base) >= turn:
            r = k
            while r < n and abs(y[r] - base) >= rest:
                r += 1
            side = "turn_left" if s > 0 else "turn_right"
            peak = float(np.max(s * (y[j:r] - base)))
            # A head turns smoothly: 3+ frames at the turn, no jump over 20 degrees in a
            # frame (those are dlib fits failing on an expression, or another face).
            held = int(np.sum(s * (y[k:r] - base) >= turn)) >= 3
            smooth = np.all(np.abs(np.diff(y[i : min(r + 1, n)])) < 20)
            if held and smooth:
                out.append(Episode(clip.name, i, j, k, r if r < n else None, side, peak))
            i = r if r < n else n
        else:
            i = j
    return out


def clips_in(folder: Path) -> list[Path]:
    """Return the video files in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="folder of clips (mp4, gif, avi, mov, webm)")
    a = p.parse_args()
    from training.measure.head_pose import HeadPoseEstimator

    det, pose = FaceDetector(), HeadPoseEstimator()
    for path in clips_in(a.folder):
        c = label(path, det, pose)
        if not len(c):
            sys.stdout.write(f"{c.name}: no face\n")
            continue
        sys.stdout.write(
            f"{c.name}: {len(c)} frames, yaw {c.yaw.min():+.0f}..{c.yaw.max():+.0f}, "
            f"pitch {c.pitch.min():+.0f}..{c.pitch.max():+.0f}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
