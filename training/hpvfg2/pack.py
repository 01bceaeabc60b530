"""Pack chip sets and the SFace judge compactly, to carry them to a GPU machine.

A GPU machine here sees only the repository plus 64 MiB in all, so training data travel
as JPEG-encoded aligned chips and SFace with float16 weights; :func:`load_packed` turns a
pack back into the :class:`~training.chips.ChipSet` the trainer reads.

    python -m training.hpvfg2.pack --out .gpu --max-mib 18
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from training.chips import ChipSet

log = logging.getLogger(__name__)

SFACE_FILE, SYSTEM_FILE = "sface.fp16.onnx", "system.fp16.onnx"  # the recognizers in a pack
CHIP = 150  # side of the DLIB_150 chips the trainer reads


def pack_chips(
    chips: ChipSet, out: Path, max_bytes: int, quality: int = 92, seed: int = 0, side: int = CHIP
) -> int:
    """Write as many chips as fit in ``max_bytes`` (whole identities, random order); return N.

    ``side`` below 150 stores the chips smaller (area-resampled); :func:`load_packed` scales
    them back. The generator renders at its working resolution (96), so chips stored at
    that size or a little above lose little that training uses, for half the bytes.
    """
    rng = np.random.default_rng(seed)
    encoded: dict[int, np.ndarray] = {}
    used = 0
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]

    def encode(chip: np.ndarray) -> np.ndarray:
        if side != CHIP:
            chip = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
        return cv2.imencode(".jpg", chip, params)[1]

    for c in rng.permutation(np.unique(chips.labels)):
        rows = np.flatnonzero(chips.labels == c)
        enc = {int(i): encode(chips.chips[i]) for i in rows}
        text = sum(len(str(chips.paths[i]).encode()) + 1 for i in rows)
        size = sum(e.nbytes for e in enc.values()) + rows.size * (128 * 4 + 4) + text
        if used + size <= max_bytes:
            encoded |= enc
            used += size
    idx = np.array(sorted(encoded), dtype=np.int64)
    blobs = [encoded[int(i)] for i in idx]
    offsets = np.cumsum([0] + [b.nbytes for b in blobs]).astype(np.int64)
    sub = chips.subset(idx)
    np.savez(
        out, jpeg=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), offsets=offsets,
        paths_utf8=_join(sub.paths), labels=sub.labels, names_utf8=_join(sub.names), z=sub.z,
        side=np.int64(side),
    )  # fmt: skip
    return len(idx)


def load_packed(path: Path) -> ChipSet:
    """Decode a pack written by :func:`pack_chips` into a ChipSet of 150 x 150 chips."""
    with np.load(path, allow_pickle=False) as f:
        data, off = f["jpeg"], f["offsets"]
        side = int(f["side"]) if "side" in f.files else CHIP
        chips = np.empty((len(off) - 1, CHIP, CHIP, 3), np.uint8)
        for i in range(len(off) - 1):
            chip = cv2.imdecode(data[off[i] : off[i + 1]], cv2.IMREAD_COLOR)
            if side != CHIP:
                chip = cv2.resize(chip, (CHIP, CHIP), interpolation=cv2.INTER_CUBIC)
            chips[i] = chip
        if "paths_utf8" in f.files:
            paths, names = _split(f["paths_utf8"]), _split(f["names_utf8"])
        else:  # packs written before names were stored as joined UTF-8
            paths, names = f["paths"], f["names"]
        return ChipSet(paths, f["labels"], names, chips, f["z"])


def packed_paths(path: Path) -> np.ndarray:
    """Return the relative paths of the chips in a pack, without decoding any image."""
    with np.load(path, allow_pickle=False) as f:
        return _split(f["paths_utf8"]) if "paths_utf8" in f.files else f["paths"]


def _join(strings: np.ndarray) -> np.ndarray:
    """Store strings as one newline-joined UTF-8 byte array: numpy's fixed-width unicode
    costs 4 bytes per character of the longest name, for every row."""
    return np.frombuffer("\n".join(map(str, strings)).encode(), np.uint8)


def _split(data: np.ndarray) -> np.ndarray:
    return np.array(data.tobytes().decode().split("\n")) if data.size else np.array([], str)


def pack_onnx_fp16(src: Path, out: Path) -> Path:
    """Copy an ONNX model with float16 initializers (OnnxGraph computes in float32)."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    onnx.save(model, str(out))
    return out


def split_parts(folder: Path, part_bytes: int) -> list[Path]:
    """Cut the pack's files into folders ``part-NN`` of at most ``part_bytes`` each.

    One device call carries at most 64 MiB with the repository, so a large pack travels
    over several calls, one part each; the files stay on the warm machine between calls.
    """
    files = sorted(f for f in folder.iterdir() if f.is_file())
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    parts: list[Path] = []
    room = 0
    for f in files:
        data, k = f.read_bytes(), 0
        while data:
            if room <= 0:
                parts.append(folder / f"part-{len(parts):02d}")
                parts[-1].mkdir()
                room = part_bytes
            chunk, data = data[:room], data[room:]
            (parts[-1] / f"{f.name}.{k:03d}").write_bytes(chunk)
            room -= len(chunk)
            k += 1
        f.unlink()
    (folder / "parts.json").write_text(json.dumps(digests, indent=1))
    return parts


def join_parts(folder: Path, out: Path) -> Path:
    """Reassemble :func:`split_parts` output into ``out`` and check every file's SHA-256."""
    digests = json.loads((folder / "parts.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name, digest in digests.items():
        chunks = sorted(
            folder.glob(f"part-*/{name}.[0-9][0-9][0-9]"), key=lambda p: (p.parent.name, p.name)
        )
        data = b"".join(c.read_bytes() for c in chunks)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{name}: parts are missing or damaged ({len(chunks)} found)")
        (out / name).write_bytes(data)
    return out


def main(argv: list[str] | None = None) -> int:
    """Pack the training and dev chips and SFace into OUT for a GPU run."""
    from training.hpvfg.cli import _chips
    from training.hpvfg2.train import SFACE_ENV

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", type=Path, default=Path(".gpu"), help="folder to write (.gpu)")
    p.add_argument("--max-mib", type=float, default=18.0, help="budget for the training chips")
    p.add_argument("--dev-faces", type=int, default=240, help="dev chips to pack (240)")
    p.add_argument("--sface", type=Path, default=None, help=f"SFace ONNX (default ${SFACE_ENV})")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KFAAR_DATA_ROOT")
    p.add_argument("--part-mib", type=float, default=None, help="split into parts of this size")
    p.add_argument(
        "--join", type=Path, default=None, help="reassemble parts from this folder into OUT"
    )
    args = p.parse_args(argv)
    if args.join is not None:
        join_parts(args.join, args.out)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train, dev = _chips(args.data_root)
    args.out.mkdir(parents=True, exist_ok=True)
    n = pack_chips(ChipSet.load(train), args.out / "train.npz", int(args.max_mib * 2**20))
    devset = ChipSet.load(dev)
    d = pack_chips(
        devset.subset(np.arange(min(args.dev_faces, len(devset)))), args.out / "dev.npz", 2**26
    )
    sface = args.sface or (Path(os.environ[SFACE_ENV]) if os.environ.get(SFACE_ENV) else None)
    if sface is not None:
        pack_onnx_fp16(sface, args.out / SFACE_FILE)
    total = sum(f.stat().st_size for f in args.out.iterdir()) / 2**20
    if args.part_mib:
        parts = split_parts(args.out, int(args.part_mib * 2**20))
        log.info("split into %d parts: carry one per device call", len(parts))
    log.info(
        "packed %d training and %d dev chips%s into %s: %.1f MiB",
        n,
        d,
        " and SFace" if sface else "",
        args.out,
        total,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
