"""Real presentation-attack and bona fide samples: the manifest, its files, their frames.

The media stay outside the repository (most carry no licence, so all rights are reserved);
``benchmarks/data/liveness_real_sources.json`` names each file by repository, commit, path
and sha256. A root directory holds them either as ``owner+name/path`` files or as the bare
git snapshot ``owner+name/repo`` that the library's fetch leaves, read with ``git show``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

MANIFEST = Path(__file__).resolve().parents[2] / "benchmarks/data/liveness_real_sources.json"
VIDEO_EXT = {".mp4", ".mov", ".3gp", ".avi", ".gif", ".webm", ".mkv"}
LABELS = {"bona fide", "attack"}


@dataclass(frozen=True)
class Sample:
    """One manifest entry: a file in a public repository and what it shows."""

    repo: str  # owner/name
    commit: str
    path: str
    sha256: str
    label: str  # "bona fide" or "attack"
    attack_type: str | None  # print, screen, video-replay, mask, other; None if bona fide
    licence: str
    note: str = ""

    @property
    def is_video(self) -> bool:
        return Path(self.path).suffix.lower() in VIDEO_EXT


def load_manifest(path: Path = MANIFEST) -> list[Sample]:
    """Read and check the manifest; raise ValueError naming the first bad entry."""
    entries = json.loads(Path(path).read_text())["samples"]
    out = []
    for i, e in enumerate(entries):
        try:
            s = Sample(**e)
        except TypeError as exc:
            raise ValueError(f"manifest entry {i}: {exc}") from exc
        if s.label not in LABELS or (s.label == "attack") != bool(s.attack_type):
            raise ValueError(f"manifest entry {i} ({s.path}): bad label/attack_type")
        if len(s.commit) != 40 or len(s.sha256) != 64:
            raise ValueError(f"manifest entry {i} ({s.path}): commit or sha256 malformed")
        out.append(s)
    return out


def read_bytes(root: Path, s: Sample) -> bytes:
    """Return the sample's bytes from ``root``; raise ValueError if missing or altered."""
    folder = Path(root) / s.repo.replace("/", "+")
    plain = folder / s.path
    if plain.is_file():
        data = plain.read_bytes()
    elif (folder / "repo").is_dir():  # a bare snapshot: read the pinned commit
        cmd = ["git", "--git-dir", str(folder / "repo"), "show", f"{s.commit}:{s.path}"]
        res = subprocess.run(cmd, capture_output=True, check=False)
        if res.returncode:
            raise ValueError(f"{s.repo}:{s.path} not in the snapshot: {res.stderr[:200]!r}")
        data = res.stdout
    else:
        raise ValueError(f"{s.repo}:{s.path} not found under {root}")
    if hashlib.sha256(data).hexdigest() != s.sha256:
        raise ValueError(f"{s.repo}:{s.path}: sha256 differs from the manifest")
    return data


def materialise(root: Path, s: Sample, cache: Path) -> Path:
    """Return a local file path holding the verified sample (copied to ``cache`` if needed)."""
    data = read_bytes(root, s)
    plain = Path(root) / s.repo.replace("/", "+") / s.path
    if plain.is_file():
        return plain
    out = Path(cache) / s.sha256[:16] / Path(s.path).name
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return out


def video_attempts(path: Path, attempts: int, per_attempt: int) -> list[list[np.ndarray]]:
    """Return up to ``attempts`` runs of ``per_attempt`` consecutive frames, evenly spaced.

    Consecutive frames, as a door camera sees them within one attempt; the runs' starts
    spread evenly over the clip so the attempts cover all of it.
    """
    cap = cv2.VideoCapture(str(path))
    try:
        frames = []  # decoded in order: seeking is unreliable in phone MOV/3GP files
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(fr)
    finally:
        cap.release()
    if len(frames) < per_attempt:
        return [frames] if frames else []
    n = min(attempts, len(frames) // per_attempt)
    starts = np.linspace(0, len(frames) - per_attempt, n).round().astype(int)
    return [frames[s : s + per_attempt] for s in starts]


def still(path: Path) -> np.ndarray:
    """Read a still image, EXIF orientation applied (phone selfies are stored rotated)."""
    im = cv2.imread(str(path))
    if im is None:
        raise ValueError(f"cannot decode {path}")
    return im


def bpcer_threshold(bona: list[float | None], target: float = 0.02) -> float:
    """Return the highest threshold whose BPCER on ``bona`` is at most ``target``.

    A frame with no face counts as refused at any threshold, so it uses up the budget.
    """
    s = sorted(x for x in bona if x is not None)
    allowed = int(np.floor(target * len(bona))) - (len(bona) - len(s))
    if allowed < 0 or not s:
        return 0.0  # even accepting every face refuses too many: report at threshold 0
    return float(s[min(allowed, len(s) - 1)])
