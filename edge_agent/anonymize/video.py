"""Anonymize a video: IoU tracks, smoothed alignment, one virtual identity per track.

Each track keeps an exponential moving average of its landmarks (steady chips, so the
virtual face does not shimmer) and of its identity embedding (so the virtual identity
does not drift). A track the detector loses is held at its last landmarks for a few
frames, so a missed detection does not leak the original face.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymize.engine import Engine, FaceOut, blur_frame, blur_region, generate_grouped
from edge_agent.face.detect import Face
from edge_agent.keys import fingerprint
from edge_agent.recognizer import l2_normalize

log = logging.getLogger(__name__)

FOURCC_BY_SUFFIX = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v"}
CHUNK = 8  # frames detected in parallel and generated in one batch
DEFAULT_FPS = 25.0  # when a container does not say


class VideoError(ValueError):
    """A video cannot be read (unreadable, empty, truncated) or written."""


class CorruptVideoError(VideoError):
    """The input video itself is bad: it cannot be opened, has no frames, or is cut off."""


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Return the intersection over union of two (x, y, w, h) boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    id: int
    box: np.ndarray  # (4,) x, y, w, h
    landmarks: np.ndarray  # (5, 2), smoothed
    score: float
    missed: int = 0
    z: np.ndarray | None = None  # smoothed identity embedding
    key: bytes | None = None
    label: str = ""
    last_virtual: np.ndarray | None = None
    last_original: np.ndarray | None = None


@dataclass
class Tracker:
    """Greedy IoU matching of detections to tracks, with landmark smoothing and holding."""

    hold: int = 8  # frames a lost track is still anonymized at its last position
    smooth: float = 0.5  # weight of the past in the landmark average (0: no smoothing)
    min_iou: float = 0.3
    tracks: list[Track] = field(default_factory=list)
    _next: int = 0

    def step(self, faces: list[Face]) -> list[tuple[Track, bool]]:
        """Update tracks with one frame's detections; return (track, held) for live tracks."""
        pairs = sorted(
            (
                (iou(t.box, np.asarray(f.box)), ti, fi)
                for ti, t in enumerate(self.tracks)
                for fi, f in enumerate(faces)
            ),
            reverse=True,
        )
        used_t, used_f = set(), set()
        for overlap, ti, fi in pairs:
            if overlap < self.min_iou or ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            t, f = self.tracks[ti], faces[fi]
            jump = np.abs(f.landmarks - t.landmarks).max() / max(f.size, 1.0)
            # A big jump is real motion, not jitter: follow it at once instead of lagging.
            a = self.smooth if jump < 0.15 else 0.0
            t.landmarks = a * t.landmarks + (1 - a) * f.landmarks
            t.box, t.score, t.missed = np.asarray(f.box, np.float64), f.score, 0
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.hold]
        for fi, f in enumerate(faces):
            if fi not in used_f:
                box = np.asarray(f.box, np.float64)
                lm = f.landmarks.astype(np.float64)
                self.tracks.append(Track(self._next, box, lm, f.score))
                self._next += 1
        return [(t, t.missed > 0) for t in self.tracks]


def open_writer(path: Path, fps: float, size: tuple[int, int], fourcc: str | None):
    codec = fourcc or FOURCC_BY_SUFFIX.get(path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise VideoError(f"cannot write a {codec} video at {path}")
    return writer


@dataclass
class VideoResult:
    frames: int
    fps: float
    size: tuple[int, int]
    faces: list[FaceOut]
    flicker_virtual: float  # mean |virtual chip(t) - virtual chip(t-1)|, 0-255 scale
    flicker_original: float  # the same on the original chips, at the same alignment
    blurred_frames: int


class VideoAnonymizer:
    """Anonymize one video file into another of the same size and frame rate."""

    def __init__(
        self, engine: Engine, pool: Executor, fallback: str, hold: int, smooth: float
    ) -> None:
        self.engine, self.pool, self.fallback = engine, pool, fallback
        self.hold, self.smooth = hold, smooth
        self.id_smooth = 0.9  # the identity is fixed per person: average z over many frames

    def run(self, src: Path, tmp: Path, fourcc: str | None = None) -> VideoResult:
        """Anonymize ``src`` into ``tmp`` (the caller renames it); raise VideoError."""
        cap = cv2.VideoCapture(str(src))
        if not cap.isOpened():
            raise CorruptVideoError("cannot open as a video (corrupt, truncated or unsupported)")
        try:
            return self._run(cap, tmp, fourcc)
        finally:
            cap.release()

    def _run(self, cap, tmp: Path, fourcc: str | None) -> VideoResult:
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not fps or not np.isfinite(fps) or fps <= 0:
            log.warning("no frame rate in the container; writing %.0f fps", DEFAULT_FPS)
            fps = DEFAULT_FPS
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        tracker = Tracker(self.hold, self.smooth)
        writer, size, n, blurred = None, None, 0, 0
        faces: list[FaceOut] = []
        diffs: tuple[list[float], list[float]] = ([], [])
        try:
            while True:
                chunk = []
                while len(chunk) < CHUNK:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    chunk.append(frame)
                if not chunk:
                    break
                if writer is None:
                    size = (chunk[0].shape[1], chunk[0].shape[0])
                    writer = open_writer(tmp, fps, size, fourcc)
                outs, b = self._chunk(chunk, n, tracker, faces, diffs)
                for out in outs:
                    if (out.shape[1], out.shape[0]) != size:
                        raise VideoError(f"frame {n} changes size to {out.shape[1]}x{out.shape[0]}")
                    writer.write(out)
                n, blurred = n + len(chunk), blurred + b
        finally:
            if writer is not None:
                writer.release()
        if n == 0:
            raise CorruptVideoError("no readable frames")
        # Containers state their length; reading far fewer frames means a cut-off file.
        if declared > 0 and n < declared * 0.99 - 1:
            raise CorruptVideoError(f"truncated: read {n} of {declared} frames")
        if not tmp.is_file() or os.path.getsize(tmp) == 0:
            raise VideoError("the video writer produced no file")
        mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
        return VideoResult(n, fps, size, faces, mean(diffs[0]), mean(diffs[1]), blurred)

    def _chunk(self, frames: list[np.ndarray], first: int, tracker: Tracker, faces, diffs):
        eng = self.engine
        split = [eng.split(found) for found in self.pool.map(eng.detector.detect, frames)]
        detections, suspects = [d for d, _ in split], [s for _, s in split]
        jobs = []  # (frame in chunk, track, held, landmarks, box, score) as of that frame
        for i, dets in enumerate(detections):
            for t, held in tracker.step(dets):
                jobs.append((i, t, held, t.landmarks.copy(), t.box.copy(), t.score))
        outs = [f.copy() for f in frames]
        blur_whole = [False] * len(frames)
        gen = []  # jobs that get a virtual face
        for job in jobs:
            i, t, held, _, box, score = job
            if held and self.fallback == "blur":
                blur_region(outs[i], tuple(box))
                rec = FaceOut(tuple(box), score, t.label or "-", "-", "blurred", first + i, t.id)
                faces.append(rec)
            else:
                gen.append(job)
        for i in range(len(frames)):
            if self.fallback == "blur" and not any(j[0] == i for j in jobs):
                blur_whole[i] = True
        if gen:
            aligned = [eng.chips(frames[i], [lm]) for i, _, _, lm, _, _ in gen]
            chips = np.concatenate([c for c, _ in aligned])
            z_raw = eng.embed(chips)
            z = np.empty_like(z_raw)
            for k, (_, t, _, _, _, _) in enumerate(gen):
                if t.z is None:
                    t.z = z_raw[k]
                    t.key, t.label = eng.keys.choose(z_raw[k : k + 1])[0]
                else:
                    t.z = l2_normalize(self.id_smooth * t.z + (1 - self.id_smooth) * z_raw[k])
                z[k] = t.z
            virtual = generate_grouped(eng.anon, chips, z, [t.key for _, t, *_ in gen], eng.batch)
            for k, (i, t, held, _, box, score) in enumerate(gen):
                outs[i] = eng.paste(outs[i], virtual[k : k + 1], aligned[k][1])
                if t.last_virtual is not None:
                    diffs[0].append(_mad(virtual[k], t.last_virtual))
                    diffs[1].append(_mad(chips[k], t.last_original))
                t.last_virtual, t.last_original = virtual[k], chips[k]
                mode = "held" if held else "detected"
                fp = fingerprint(t.key)
                faces.append(FaceOut(tuple(box), score, t.label, fp, mode, first + i, t.id))
        for i, whole in enumerate(blur_whole):
            if whole:
                outs[i] = blur_frame(outs[i])
            else:
                faces += eng.blur_suspects(outs[i], suspects[i], first + i)
        return outs, sum(blur_whole)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
