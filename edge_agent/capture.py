"""Frame sources for the edge agent: a webcam index, a video file, an RTSP URL or a folder.

Live sources (webcams, RTSP) are read by a background thread that keeps only the newest
frame, so a slow pipeline never works on stale video. Files and folders are read in
order, every frame, since nothing is lost by waiting for them.

``timed_frames`` also stamps each frame with its time, for the liveness trial: live
sources on the monotonic clock as frames arrive, a video file on its own clock (so a
recording is judged at the pace it was recorded, however fast it is read).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from edge_agent.face.image_io import ImageError, load_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class SourceError(ValueError):
    """A frame source cannot be opened."""


class LatestFrameReader:
    """Read a live capture on a thread; ``latest`` returns the newest frame not yet taken."""

    def __init__(self, capture: cv2.VideoCapture) -> None:
        self.capture = capture
        self._frame: np.ndarray | None = None
        self._fresh = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done:
            ok, frame = self.capture.read()
            with self._fresh:
                if not ok:
                    self._done = True
                else:
                    self._frame = frame  # older frames are dropped here
                self._fresh.notify_all()

    def latest(self, timeout: float = 5.0) -> np.ndarray | None:
        """Wait for a frame newer than the last one taken; None when the stream ended."""
        with self._fresh:
            self._fresh.wait_for(lambda: self._frame is not None or self._done, timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        self._done = True
        self._thread.join(timeout=2)
        self.capture.release()


def _folder(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    files = sorted(q for q in path.rglob("*") if q.is_file())
    others = [q for q in files if q.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        names = ", ".join(q.name for q in others[:5]) + (" ..." if len(others) > 5 else "")
        log.warning("%s: skipped: %d not images (%s)", path, len(others), names)
    for p in files:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            yield str(p.relative_to(path)), load_image(p)
        except ImageError as exc:
            log.warning("skipping %s", exc)  # the message names the file and the fault


def _video(capture: cv2.VideoCapture, name: str) -> Iterator[tuple[str, np.ndarray]]:
    i = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield f"{name}#{i}", frame
            i += 1
    finally:
        capture.release()


def _live(capture: cv2.VideoCapture, name: str) -> Iterator[tuple[str, np.ndarray]]:
    reader, i = LatestFrameReader(capture), 0
    try:
        while (frame := reader.latest()) is not None:
            yield f"{name}#{i}", frame
            i += 1
    finally:
        reader.close()


def _is_live(source: str) -> bool:
    return source.isdigit() or "://" in source  # a webcam index or a stream URL


def _open(source: str) -> cv2.VideoCapture:
    """Open a webcam index, a stream URL or a video file; SourceError if it cannot."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise SourceError(f"cannot open {source}")
    return capture


def frames(source: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (label, BGR frame) from a webcam index, RTSP/HTTP URL, video, image or folder."""
    if _is_live(source):
        return _live(_open(source), source)
    path = Path(source)
    if path.is_dir():
        return _folder(path)
    if not path.is_file():
        raise SourceError(f"no such camera, URL, video, image or folder: {source}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return iter([(path.name, load_image(path))])
    return _video(_open(source), path.name)


TimedFrame = tuple[str, float, np.ndarray]  # (label, seconds, BGR frame)


@runtime_checkable
class PromptedSource(Protocol):
    """A source of timed frames that is told each prompt the door shows (a test rig)."""

    def __iter__(self) -> Iterator[TimedFrame]: ...

    def prompted(self, text: str) -> None:
        """The door has just shown ``text`` to the person in front of the camera."""


def _stamped_video(capture: cv2.VideoCapture, name: str) -> Iterator[TimedFrame]:
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 240 else 25.0  # a file that does not say: the common rate
    with closing(_video(capture, name)) as video:  # closing this closes the capture
        for i, (label, frame) in enumerate(video):
            yield label, i / fps, frame


def _stamped_live(capture: cv2.VideoCapture, name: str) -> Iterator[TimedFrame]:
    with closing(_live(capture, name)) as live:
        for label, frame in live:
            yield label, time.monotonic(), frame


def timed_frames(source: str) -> Iterator[TimedFrame]:
    """Yield (label, seconds, BGR frame) from a webcam index, RTSP/HTTP URL or video file."""
    if _is_live(source):
        return _stamped_live(_open(source), source)
    path = Path(source)
    if path.is_dir():
        raise SourceError(f"{source} is a folder: a trial needs a camera, a URL or a video")
    if not path.is_file():
        raise SourceError(f"no such camera, URL or video file: {source}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{source} is an image: a trial needs a camera, a URL or a video")
    return _stamped_video(_open(source), path.name)
