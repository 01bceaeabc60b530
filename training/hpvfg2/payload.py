"""Write a self-contained HPVFG 2.0 training payload: code, recognizers, data, init weights.

Any machine with torch, numpy, onnx and OpenCV trains from the folder with one command,
``bash run.sh``; nothing else of the repository is needed there. The folder holds:

- the Python modules the trainer imports (found by importing it) and ``training/assets``;
- ``pack/``: the system recognizer and SFace with float16 weights, the training chips (LFW
  training identities and aligned CelebA, whole identities in random order until the
  size budget is spent, stored at ``--side`` px) and the LFW dev chips;
- ``init.fp16.pt``: the slim weights of the run ``runs.json`` names, to continue from;
- ``run.sh`` and ``manifest.json`` (every file's size and SHA-256, the data counts).

A device call carries at most 64 MiB with the repository, so ``--parts`` also cuts the
payload into tar parts (training.hpvfg2.pack.split_parts); scripts/gpu_train_hpvfg2.sh
says how they travel and are joined. ``--part-mib auto`` (the default) measures the working
tree as a device call copies it and picks the largest part that leaves 4 MiB to spare.

    python -m training.hpvfg2.payload --out .gpu/payload --parts .gpu/parts
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from training.chips import ChipSet
from training.hpvfg2.device_budget import MIB, part_size
from training.hpvfg2.pack import (
    SFACE_FILE,
    SYSTEM_FILE,
    pack_chips,
    pack_onnx_fp16,
    packed_paths,
    split_parts,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(__file__).with_name("runs.json")
# What the trainer imports, also lazily (profiling, critic augmentation).
ENTRY_MODULES = ("training.hpvfg2.run", "training.hpvfg2.profile", "training.hpvfg2.augment")
ASSET_DIRS = ("training/assets",)  # small data files trainers read (FER network, ...)
MAX_MIB = 60.0
RUN_SH = """#!/usr/bin/env bash
# Train HPVFG 2.0 from this payload: OUT=dir BUDGET_S=450 bash run.sh [training.hpvfg2.run flags]
# Writes weights.fp16.pt, weights-STEP.fp16.pt snapshots (stage ends first), history.json and
# train.log (with the --profile table) to $OUT: at most 8 files. Resumes from $WORK if there.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
WORK="${WORK:-/tmp/hpvfg2}"
mkdir -p "$OUT"
cd "$HERE"
export PYTHONUNBUFFERED=1 PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
INIT=()
if [ -f init.fp16.pt ]; then INIT=(--init init.fp16.pt); fi
"${PYTHON:-python3}" -m training.hpvfg2.run --packed pack --out "$WORK" --slim "$OUT" \\
  --budget-s "${BUDGET_S:-450}" --profile "${INIT[@]}" "$@" 2>&1 | tee "$OUT/train.log"
cp "$WORK/history.json" "$OUT/"
"""


def trainer_sources(root: Path = ROOT, modules: tuple[str, ...] = ENTRY_MODULES) -> list[Path]:
    """Return the repository's .py files that importing ``modules`` loads (relative paths)."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}:\n"
        "    try:\n        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != m: raise\n"
        "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))\n"
    )
    env = os.environ | {"PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    files = {Path(f) for f in json.loads(out.stdout.splitlines()[-1]) if f}
    files = {f.resolve() for f in files if f.is_absolute() and f.is_file()}
    rels = [f.relative_to(root) for f in files if f.is_relative_to(root) and f.suffix == ".py"]
    # Only the project's packages, not a virtual environment that lives in the checkout.
    found = {root / r for r in rels if r.parts[0] in _packages(root)}
    return sorted(f.relative_to(root) for f in _import_closure(root, found))


def _packages(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/__init__.py")}


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_closure(root: Path, files: set[Path]) -> set[Path]:
    """Add every project module that ``files`` import anywhere, also inside functions.

    Importing the trainer finds what loads at start; lazy imports (an expression network
    loaded only when its loss weight is set) load later, so the sources are read too.
    """
    packages, todo, seen = _packages(root), list(files), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        here = path.relative_to(root).with_suffix("").parts
        here = here[:-1] if here[-1] == "__init__" else here
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + (path.name == "__init__.py")])
                mod = node.module or ""
                if node.level:
                    mod = f"{base}.{mod}".strip(".") if mod else base
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] not in packages:
                    continue
                for i in range(1, len(parts) + 1):  # the packages above it run too
                    found = _module_file(root, ".".join(parts[:i]))
                    if found is not None and found not in seen:
                        todo.append(found)
    return seen


def continue_from(runs: Path = RUNS, root: Path = ROOT) -> Path | None:
    """Return the slim weights ``runs.json`` names to continue from (relative to the repo)."""
    if not runs.is_file():
        return None
    name = json.loads(runs.read_text()).get("continue_from")
    return (root / name).resolve() if name else None


def merge(sets: dict[str, ChipSet]) -> ChipSet:
    """Concatenate chip sets into one, identities kept apart by a ``source/`` name prefix."""
    paths, labels, names, chips, z = [], [], [], [], []
    for source, s in sets.items():
        labels.append(s.labels.astype(np.int32) + sum(len(n) for n in names))
        names.append(np.array([f"{source}/{n}" for n in s.names]))
        paths.append(np.array([f"{source}/{p}" for p in s.paths]))
        chips.append(s.chips)
        z.append(s.z)
    cat = np.concatenate
    return ChipSet(cat(paths), cat(labels), cat(names), cat(chips), cat(z))


def celeba_chips(out: Path, root: Path | None = None) -> Path:
    """Align and embed every image of ``celeba_align`` once into the chip set ``out``.

    The folders hold identities none of the test sets use (see the data README), so all of
    them may train.
    """
    from training.chips import build_chip_set, list_images
    from training.datasets import data_root

    folder = (root or data_root()) / "celeba_align"
    if not folder.is_dir():
        raise FileNotFoundError(f"no {folder}: set --data-root, or --no-celeba")
    log.info("building CelebA chips from %s into %s (once)", folder, out)
    build_chip_set(folder, list_images(folder)).save(out)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _commit(root: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def build_payload(
    out: Path,
    train: dict[str, ChipSet],
    dev: ChipSet,
    system_onnx: Path,
    sface_onnx: Path | None = None,
    init: Path | None = None,
    max_mib: float = MAX_MIB,
    side: int = 112,
    quality: int = 85,
    dev_faces: int = 240,
    root: Path = ROOT,
) -> dict:
    """Write the payload folder ``out`` within ``max_mib``; return its manifest."""
    if out.exists():
        if not (out / "manifest.json").is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a payload: refusing to replace it")
        shutil.rmtree(out)
    pack = out / "pack"
    pack.mkdir(parents=True)
    for rel in trainer_sources(root):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, out / rel)
    for rel in ASSET_DIRS:
        if (root / rel).is_dir():
            shutil.copytree(root / rel, out / rel, dirs_exist_ok=True)
    pack_onnx_fp16(system_onnx, pack / SYSTEM_FILE)
    if sface_onnx is not None:
        pack_onnx_fp16(sface_onnx, pack / SFACE_FILE)
    if init is not None:
        shutil.copyfile(init, out / "init.fp16.pt")
    (out / "run.sh").write_text(RUN_SH)
    (out / "run.sh").chmod(0o755)
    n_dev = pack_chips(dev.subset(np.arange(min(dev_faces, len(dev)))), pack / "dev.npz", 2**26)
    used = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    room = int(max_mib * 2**20) - used - 2**18  # the manifest
    if room <= 0:
        raise ValueError(f"payload is {used / 2**20:.1f} MiB before any training chips")
    merged = merge(train)
    for _ in range(4):  # pack_chips only estimates the npz overhead: shrink until it fits
        n = pack_chips(merged, pack / "train.npz", room, quality=quality, side=side)
        over = (pack / "train.npz").stat().st_size - room
        if over <= 0:
            break
        room -= over + 2**16
    kept = [str(p).split("/", 1)[0] for p in packed_paths(pack / "train.npz")]
    files = sorted(f for f in out.rglob("*") if f.is_file())
    manifest = {
        "commit": _commit(root),
        "init": str(init) if init else None,
        "chips": {"train": n, "dev": n_dev, "side": side, "quality": quality}
        | {f"train_{src}": kept.count(src) for src in train},
        "files": {str(f.relative_to(out)): [f.stat().st_size, _digest(f)] for f in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if total > max_mib * 2**20:
        raise ValueError(f"payload is {total / 2**20:.1f} MiB, over {max_mib} MiB")
    manifest["mib"] = round(total / 2**20, 2)
    return manifest


def split_payload(payload: Path, parts: Path, part_bytes: int) -> list[Path]:
    """Tar the payload into ``parts`` and cut it into part-NN folders of ``part_bytes`` each."""
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    with tarfile.open(parts / "payload.tar", "w") as tar:
        tar.add(payload, arcname="payload")
    return split_parts(parts, part_bytes)


def main(argv: list[str] | None = None) -> int:
    """Write a self-contained training payload (and its parts) for a GPU machine."""
    from edge_agent.assets import asset_path, cache_dir
    from training.hpvfg.cli import _chips
    from training.hpvfg2.train import SFACE_ENV, SYSTEM_RECOGNIZER

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", type=Path, default=Path(".gpu/payload"), help="payload folder")
    p.add_argument("--parts", type=Path, default=None, help="also write tar parts here")
    p.add_argument("--part-mib", default="auto",
                   help="size of one part in MiB, or 'auto' (default): the largest that a "
                   "device call carries beside the working tree with 4 MiB spare")  # fmt: skip
    p.add_argument("--repo", type=Path, default=ROOT,
                   help="the checkout whose tree travels with each part (this one)")  # fmt: skip
    p.add_argument("--max-mib", type=float, default=MAX_MIB, help=f"payload size ({MAX_MIB:g})")
    p.add_argument("--side", type=int, default=112, help="stored chip side in px (112)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality (85)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KFAAR_DATA_ROOT")
    p.add_argument(
        "--celeba", type=Path, default=None,
        help="CelebA chip set .npz (default: the cache's celeba_chips.npz, built from "
        "DATA_ROOT/celeba_align when absent: about 20 minutes on two cores)",
    )  # fmt: skip
    p.add_argument("--no-celeba", action="store_true", help="LFW training identities only")
    p.add_argument("--sface", type=Path, default=None, help=f"SFace ONNX (default ${SFACE_ENV})")
    p.add_argument("--init", type=Path, default=None, help="slim weights (default: runs.json)")
    p.add_argument("--no-init", action="store_true", help="start from scratch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not 16 <= args.side <= 150:
        p.error("--side must be between 16 and 150")
    part_bytes = None
    if args.parts is not None:  # measure before the long build: refuse early if none fits
        try:
            part_bytes = part_size(args.part_mib, args.repo)
        except ValueError as exc:
            p.error(str(exc))
    sface = args.sface or (Path(os.environ[SFACE_ENV]) if os.environ.get(SFACE_ENV) else None)
    if sface is not None and not sface.is_file():
        p.error(f"--sface: no SFace model at {sface}")
    init = None if args.no_init else (args.init or continue_from())
    if init is not None and not init.is_file():
        p.error(f"--init: no weights at {init} (runs.json names it; --no-init to start afresh)")
    train_path, dev_path = _chips(args.data_root)
    sets = {"lfw": ChipSet.load(train_path)}
    if not args.no_celeba:
        celeba = args.celeba or cache_dir() / "chips" / "celeba_chips.npz"
        if not celeba.is_file():
            if args.celeba is not None:
                p.error(f"--celeba: no chip set at {celeba}")
            celeba = celeba_chips(celeba, args.data_root)
        sets["celeba"] = ChipSet.load(celeba)
    manifest = build_payload(
        args.out, sets, ChipSet.load(dev_path), asset_path(SYSTEM_RECOGNIZER), sface, init,
        args.max_mib, args.side, args.quality,
    )  # fmt: skip
    log.info("payload %s: %.1f MiB, chips %s", args.out, manifest["mib"], manifest["chips"])
    if part_bytes is not None:
        parts = split_payload(args.out, args.parts, part_bytes)
        log.info(
            "%d parts of at most %.2f MiB in %s: %d device calls, one part each (the first "
            "also parts.json; the last trains)", len(parts), part_bytes / MIB, args.parts,
            len(parts),
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
