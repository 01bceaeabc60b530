"""Locate face datasets and read LFW-style folders, triplet files and pair lists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT_ENV = "KFAAR_DATA_ROOT"
MODELS_ROOT_ENV = "KFAAR_MODELS_ROOT"
_REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Return the data root: ``$KFAAR_DATA_ROOT``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else _REPO.parent / "shared" / "data"


def models_root() -> Path:
    """Return the evaluation models folder (judges/, forensics/): ``$KFAAR_MODELS_ROOT``.

    The default is ``../shared/models`` beside the checkout; these weights are not shipped.
    """
    env = os.environ.get(MODELS_ROOT_ENV)
    return Path(env).expanduser() if env else _REPO.parent / "shared" / "models"


@dataclass(frozen=True)
class Triplet:
    """Two photos of one person (``x1``, ``x2``) and one of another (``y``), relative paths."""

    x1: str
    x2: str
    y: str


def identity_of(rel: str) -> str:
    """Return the identity of an LFW-style relative path ``<identity>/<image>``."""
    parts = Path(rel).parts
    if len(parts) < 2:
        raise ValueError(f"path {rel!r} is not of the form <identity>/<image>")
    return parts[-2]


def read_triplets(path: Path, limit: int | None = None) -> tuple[list[Triplet], list[int]]:
    """Read lines ``x1 x2 y``; return the triplets and the line numbers of inconsistent ones.

    A line whose ``x1`` and ``x2`` are different people, or whose ``y`` is the same person,
    is skipped rather than fatal: the paper's own split files contain a few such lines.
    """
    triplets, skipped = [], []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'x1 x2 y', got {len(fields)} fields")
        t = Triplet(*fields)
        if identity_of(t.x1) != identity_of(t.x2) or identity_of(t.x1) == identity_of(t.y):
            skipped.append(lineno)
            continue
        triplets.append(t)
        if limit is not None and len(triplets) >= limit:
            break
    if not triplets:
        raise ValueError(f"{path}: no valid triplets")
    return triplets, skipped


def read_lfw_pairs(path: Path) -> list[tuple[str, str, bool]]:
    """Read an LFW pairs file into ``(relpath_a, relpath_b, same)`` tuples."""
    pairs = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        f = line.split()
        if len(f) == 3:
            a, b, same = (f[0], int(f[1])), (f[0], int(f[2])), True
        elif len(f) == 4:
            a, b, same = (f[0], int(f[1])), (f[2], int(f[3])), False
        elif len(f) in (0, 1, 2):  # blank or a "folds count" header line
            continue
        else:
            raise ValueError(f"{path}:{lineno}: cannot parse {line!r}")
        pairs.append((_lfw_rel(*a), _lfw_rel(*b), same))
    return pairs


def _lfw_rel(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"
