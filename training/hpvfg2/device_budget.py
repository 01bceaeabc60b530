"""How big a payload part may be so that a device call still carries it with the repository.

A device call copies the working tree (tracked and untracked-but-not-ignored files, and
``shared/`` inside the checkout) plus the paths it carries, at most 64 MiB in all
(/work/.library/device/README.md): a part is what is left, less a safety margin.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("training.hpvfg2.payload")

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20
CALL_LIMIT = 64 * MIB  # what one device call carries: working tree + carried paths
MARGIN = 4 * MIB  # left free so the tree can grow a little between building and calling
MIN_PART = 2 * MIB  # smaller parts would need more calls than a device session allows
PARTS_JSON_ROOM = 64 * 1024  # parts.json travels with the first part


def tree_bytes(root: Path = ROOT) -> tuple[int, int]:
    """Return (bytes, files) of the working tree a device call copies from ``root``.

    That is the tracked and the untracked-but-not-ignored files (``git ls-files -co
    --exclude-standard``), as they are on disk (a deleted tracked file does not travel, a
    link travels as a link), plus ``shared/`` inside the checkout, which travels ignored or not.
    """
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        why = (getattr(exc, "stderr", b"") or b"").decode().strip() or str(exc)
        raise ValueError(f"cannot list the working tree of {root}: {why}") from None
    paths = {root / os.fsdecode(n) for n in out.split(b"\0") if n}
    shared = root / "shared"
    if shared.is_dir() and not shared.is_symlink():
        paths |= {p for p in shared.rglob("*") if p.is_file() or p.is_symlink()}
    total = files = 0
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_dir() and not path.is_symlink():
            continue  # a submodule's folder: git lists it, its files are its own affair
        total, files = total + st.st_size, files + 1
    return total, files


def auto_part_bytes(tree: int, limit: int = CALL_LIMIT, margin: int = MARGIN) -> int:
    """Return the largest part (a multiple of 64 KiB) a call can carry beside ``tree`` bytes.

    Raises ValueError when even ``MIN_PART`` would leave less than ``margin`` spare.
    """
    room = limit - tree - margin - PARTS_JSON_ROOM
    part = room // (64 * 1024) * (64 * 1024)
    if part < MIN_PART:
        raise ValueError(
            f"the working tree is {tree / MIB:.1f} MiB: a device call carries {limit / MIB:g} "
            f"MiB, so with {margin / MIB:g} MiB spare a part could be only "
            f"{max(room, 0) / MIB:.2f} MiB, under the {MIN_PART / MIB:g} MiB minimum; shrink or "
            "git-ignore what need not travel"
        )
    return part


def part_size(spec: str, root: Path = ROOT) -> int:
    """Turn ``--part-mib`` (``auto`` or a number of MiB) into bytes; log the measured sizes."""
    tree, files = tree_bytes(root)
    if spec == "auto":
        part = auto_part_bytes(tree)
    else:
        try:
            part = int(float(spec) * MIB)
        except ValueError:
            raise ValueError(f"--part-mib: want 'auto' or a number of MiB, not {spec!r}") from None
        if part <= 0:
            raise ValueError("--part-mib must be positive")
        if tree + part + PARTS_JSON_ROOM > CALL_LIMIT:
            raise ValueError(
                f"--part-mib {spec}: the working tree is {tree / MIB:.1f} MiB, so a call would "
                f"carry over {CALL_LIMIT / MIB:g} MiB; use --part-mib auto"
            )
    spare = CALL_LIMIT - tree - part - PARTS_JSON_ROOM
    log.info(
        "working tree %.2f MiB in %d files (git ls-files -co --exclude-standard); a call "
        "carries %g MiB: parts of %.2f MiB leave %.2f MiB spare",
        tree / MIB, files, CALL_LIMIT / MIB, part / MIB, spare / MIB,
    )  # fmt: skip
    return part


def plan(parts: Path, root: Path = ROOT) -> list[tuple[str, int, int]]:
    """Return (call's carry, its bytes, bytes it copies in all) for each part in ``parts``."""
    tree = tree_bytes(root)[0]
    folders = sorted(p for p in parts.glob("part-[0-9][0-9]") if p.is_dir())
    if not folders:
        raise ValueError(f"no part-NN folders in {parts}: build them with training.hpvfg2.payload")
    calls = []
    for i, folder in enumerate(folders):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        carry = folder.name
        if i == 0 and (parts / "parts.json").is_file():
            size += (parts / "parts.json").stat().st_size
            carry = f"parts.json + {carry}"
        calls.append((carry, size, tree + size))
    return calls


def main(argv: list[str] | None = None) -> int:
    """Check that each built part still travels beside today's working tree, before a call."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--parts", type=Path, default=Path(".gpu/parts"), help="the parts folder")
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout that travels")
    args = p.parse_args(argv)
    try:
        tree, files = tree_bytes(args.repo)
        calls = plan(args.parts, args.repo)
    except ValueError as exc:
        p.error(str(exc))
    out = sys.stdout
    out.write(f"working tree {tree / MIB:.2f} MiB in {files} files; a call carries at most "
              f"{CALL_LIMIT / MIB:g} MiB\n")  # fmt: skip
    worst = min(CALL_LIMIT - total for _, _, total in calls)
    for n, (carry, size, total) in enumerate(calls, 1):
        out.write(f"call {n}: carry {carry} ({size / MIB:.2f} MiB): {total / MIB:.2f} MiB\n")
    out.write(f"{len(calls)} device calls; the fullest leaves {worst / MIB:.2f} MiB spare\n")
    if worst < 0:
        sys.stderr.write("a call would be over the limit: rebuild the parts with --part-mib auto\n")
        return 2
    if worst < MARGIN:
        sys.stderr.write(f"under {MARGIN / MIB:g} MiB spare: the tree may outgrow it; rebuild "
                         "the parts with --part-mib auto\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
