"""Anonymize images, folders (recursively) and videos; one sidecar and one result per file.

A file that fails (unreadable, no face, truncated, unwritable) is reported and the run goes
on. Outputs are written under a temporary name in their final folder and renamed into
place, so a failure or an interrupted run never leaves a partial output behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.anonymize import IMAGE_OUTPUT_QUALITY, VIDEO_SUFFIXES
from edge_agent.anonymize.engine import Engine, FaceOut, blur_frame
from edge_agent.anonymize.video import CorruptVideoError, VideoAnonymizer
from edge_agent.capture import IMAGE_SUFFIXES
from edge_agent.face.image_io import load_image
from edge_agent.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Options:
    fallback: str = "fail"  # no face in an image: fail | blur (whole frame) | skip (no output)
    hold: int = 8  # video: frames a lost face is still anonymized at its last position
    smooth: float = 0.5  # video: landmark averaging weight of the past
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    fourcc: str | None = None  # video codec; default by output suffix


@dataclass
class FileResult:
    source: str
    output: str | None
    status: str  # ok | failed | skipped
    faces: int = 0
    error: str = ""
    flicker: dict | None = None
    bad_input: bool | None = None  # True: the file itself is corrupt or unreadable

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


def is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def not_media(source: Path) -> list[Path]:
    """Return the files of a folder that ``plan`` leaves out: not images or videos."""
    if not Path(source).is_dir():
        return []
    return sorted(p for p in Path(source).rglob("*") if p.is_file() and not is_media(p))


def plan(source: Path, output: Path) -> list[tuple[Path, Path]]:
    """Return (input, output) pairs; folders are mirrored by relative path."""
    source, output = Path(source), Path(output)
    if source.is_dir():
        if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
            raise ValueError(f"the output {output} must not be inside the input {source}")
        files = sorted(p for p in source.rglob("*") if p.is_file() and is_media(p))
        return [(p, output / p.relative_to(source)) for p in files]
    if not source.exists():
        raise FileNotFoundError(f"no such image, video or folder: {source}")
    if not is_media(source):
        raise ValueError(f"{source}: not an image or video suffix")
    # An existing folder, or a new path without a suffix, is a folder to write into.
    dst = output / source.name if output.is_dir() or not output.suffix else output
    if dst.resolve() == source.resolve():
        raise ValueError(f"refusing to overwrite the input {source}")
    if dst.suffix.lower() != source.suffix.lower():
        raise ValueError(f"the output {dst} must keep the input's suffix {source.suffix}")
    return [(source, dst)]


def temp_name(dst: Path) -> Path:
    """Return a hidden temporary name next to ``dst`` that keeps its suffix (codecs need it)."""
    return dst.with_name(f".{dst.stem}.{secrets.token_hex(4)}.part{dst.suffix}")


def sidecar_path(dst: Path) -> Path:
    return dst.with_name(dst.name + ".json")


def write_atomic(dst: Path, data: bytes) -> None:
    """Write ``data`` to ``dst`` through a temporary file and a rename."""
    tmp = temp_name(dst)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def encode_image(image: np.ndarray, suffix: str) -> bytes:
    params = []
    if suffix.lower() in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, IMAGE_OUTPUT_QUALITY]
    elif suffix.lower() == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, IMAGE_OUTPUT_QUALITY]
    ok, buf = cv2.imencode(suffix, image, params)
    if not ok:
        raise ValueError(f"cannot encode {suffix}")
    return buf.tobytes()


class Runner:
    """Run one anonymize job over planned files; collect a FileResult per file."""

    def __init__(self, engine: Engine, options: Options, meta: dict) -> None:
        self.engine, self.options, self.meta = engine, options, meta
        self.results: list[FileResult] = []

    def run(self, pairs: list[tuple[Path, Path]]) -> list[FileResult]:
        images = [p for p in pairs if p[0].suffix.lower() in IMAGE_SUFFIXES]
        videos = [p for p in pairs if p[0].suffix.lower() in VIDEO_SUFFIXES]
        with ThreadPoolExecutor(self.options.workers) as pool:
            loaded = _prefetch(pool, images, self._load, 2 * self.options.workers)
            batch: list = []
            if images:  # no empty bars
                loaded = progress(loaded, total=len(images), desc="images", unit="img")
            for item in loaded:
                batch.append(item)
                faces = sum(len(f) for *_, f in batch if f)
                if faces >= self.engine.batch or len(batch) >= self.engine.batch:
                    self._flush(batch)
            self._flush(batch)
            video = VideoAnonymizer(
                self.engine, pool, self.options.fallback, self.options.hold, self.options.smooth
            )
            for src, dst in progress(videos, desc="videos", unit="video") if videos else ():
                self.results.append(self._video(video, src, dst))
        order = {str(src): i for i, (src, _) in enumerate(pairs)}
        self.results.sort(key=lambda r: order.get(r.source, len(order)))
        return self.results

    def _load(self, pair: tuple[Path, Path]):
        """Decode and detect on a worker thread: (pair, image or exception, faces)."""
        try:
            image = load_image(pair[0])
            return pair, image, self.engine.detector.detect(image)
        except Exception as exc:  # reported per file; the run goes on
            return pair, exc, None

    def _flush(self, batch: list) -> None:
        ready = []
        for (src, dst), image, found in batch:
            faces, suspects = self.engine.split(found or [])
            if isinstance(image, Exception):
                why = str(image).removeprefix(f"{src}: ")  # the table names the file already
                self._fail(src, f"unreadable: {why}", bad_input=True)
            elif faces:
                ready.append(((src, dst), image, faces, suspects))
            elif self.options.fallback == "skip":
                log.warning("%s: no face found; skipped (no output)", src)
                self.results.append(FileResult(str(src), None, "skipped", error="no face found"))
            elif self.options.fallback == "blur":
                box = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
                rec = FaceOut(box, 0.0, "-", "-", "blurred")
                self._write_image(src, dst, blur_frame(image), [rec], note="no face: blurred")
            else:
                self._fail(src, "no face found (use --fallback blur or skip to allow this)")
        batch.clear()
        if ready:
            try:
                outs = self.engine.replace_images([(img, faces) for _, img, faces, _ in ready])
            except Exception as exc:  # fails these files only
                for (src, _), *_ in ready:
                    self._fail(src, f"anonymization failed: {exc}")
                return
            for ((src, dst), _, _, suspects), (out, records) in zip(ready, outs, strict=True):
                records += self.engine.blur_suspects(out, suspects)
                self._write_image(src, dst, out, records)

    def _write_image(self, src, dst, image, records: list[FaceOut], note: str = "") -> None:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dst, encode_image(image, dst.suffix))
            size = {"width": image.shape[1], "height": image.shape[0]}
            try:
                self._sidecar(src, dst, {"kind": "image", **size, "faces": records, "note": note})
            except OSError:
                dst.unlink(missing_ok=True)  # an output always comes with its sidecar
                raise
        except (OSError, ValueError) as exc:
            self._fail(src, f"cannot write {dst}: {exc}", dst)
            return
        self.results.append(FileResult(str(src), str(dst), "ok", len(records), note))

    def _video(self, video: VideoAnonymizer, src: Path, dst: Path) -> FileResult:
        tmp = None
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_name(dst)
            res = video.run(src, tmp, self.options.fourcc)
            detected = [f for f in res.faces if f.mode == "detected"]
            if not detected and self.options.fallback != "blur":
                if self.options.fallback == "skip":
                    return FileResult(str(src), None, "skipped", error="no face found")
                raise ValueError("no face found in any frame")
            os.replace(tmp, dst)
            ratio = res.flicker_virtual / res.flicker_original if res.flicker_original else None
            flicker = {
                "virtual_chip_mad": round(res.flicker_virtual, 3),
                "original_chip_mad": round(res.flicker_original, 3),
                "ratio": round(ratio, 3) if ratio is not None else None,
            }
            info = {
                "kind": "video",
                "width": res.size[0],
                "height": res.size[1],
                "fps": res.fps,
                "frames": res.frames,
                "blurred_frames": res.blurred_frames,
                "tracks": len({f.track for f in res.faces if f.track is not None}),
                "flicker": flicker,
                "faces": res.faces,
            }
            try:
                self._sidecar(src, dst, info)
            except OSError:
                dst.unlink(missing_ok=True)  # an output always comes with its sidecar
                raise
            return FileResult(str(src), str(dst), "ok", len(res.faces), flicker=flicker)
        except Exception as exc:  # decoder, codec or model failure: this file only
            log.info("%s: %s", src, exc)  # the caller reports it; logged for -v
            self._cleanup(dst)
            bad = True if isinstance(exc, CorruptVideoError) else None
            return FileResult(str(src), None, "failed", error=str(exc), bad_input=bad)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _sidecar(self, src: Path, dst: Path, info: dict) -> None:
        info["faces"] = [f.to_json() for f in info["faces"]]
        doc = {"source": src.name, "output": dst.name, **self.meta, **info}
        write_atomic(sidecar_path(dst), (json.dumps(doc, indent=1) + "\n").encode())

    def _cleanup(self, dst: Path) -> None:
        """Remove a sidecar left without its output (written, then the output failed)."""
        try:
            if not dst.exists():
                sidecar_path(dst).unlink(missing_ok=True)
        except OSError:  # the folder itself is unusable: nothing could have been written
            pass

    def _fail(
        self, src: Path, error: str, dst: Path | None = None, bad_input: bool | None = None
    ) -> None:
        log.info("%s: %s", src, error)  # the caller reports it; logged for -v
        if dst is not None:
            self._cleanup(dst)
        self.results.append(FileResult(str(src), None, "failed", error=error, bad_input=bad_input))


def _prefetch(pool: Executor, items, fn, depth: int) -> Iterator:
    """Map ``fn`` over ``items`` on ``pool`` in order, with at most ``depth`` in flight."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
