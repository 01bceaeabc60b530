"""``--part-mib auto``: parts sized to what a device call carries beside the working tree."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from training.hpvfg2.device_budget import (
    CALL_LIMIT,
    MARGIN,
    MIB,
    MIN_PART,
    PARTS_JSON_ROOM,
    auto_part_bytes,
    part_size,
    tree_bytes,
)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _sized(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: big on paper, instant to write; the size is what travels
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / ".gitignore").write_text("/.gpu/\n/shared/\n*.log\n")
    _sized(root / "tracked.bin", 3000)
    _sized(root / "gone.bin", 5000)
    _git(root, "add", ".gitignore", "tracked.bin", "gone.bin")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (root / "gone.bin").unlink()  # deleted but still in the index: does not travel
    _sized(root / "new" / "untracked.txt", 700)  # untracked, not ignored: travels
    _sized(root / ".gpu" / "parts" / "part-00" / "x", 9 * MIB)  # ignored: only when carried
    _sized(root / "run.log", 1234)  # ignored
    return root


def test_tree_counts_what_a_device_call_copies(repo: Path) -> None:
    gitignore = len((repo / ".gitignore").read_bytes())
    assert tree_bytes(repo) == (gitignore + 3000 + 700, 3)
    # shared/ inside the checkout travels although it is ignored
    _sized(repo / "shared" / "data" / "a.npz", 4096)
    assert tree_bytes(repo) == (gitignore + 3000 + 700 + 4096, 4)


def test_auto_part_is_the_largest_that_keeps_the_margin() -> None:
    tree = 52 * MIB + 12345
    part = auto_part_bytes(tree)
    assert part % (64 * 1024) == 0
    assert CALL_LIMIT - tree - part - PARTS_JSON_ROOM >= MARGIN
    assert CALL_LIMIT - tree - (part + 64 * 1024) - PARTS_JSON_ROOM < MARGIN  # next one fails
    # the tree grows: the part shrinks with it, down to the minimum, then refuses
    assert auto_part_bytes(tree + 3 * MIB) == part - 3 * MIB
    biggest_tree = CALL_LIMIT - MARGIN - PARTS_JSON_ROOM - MIN_PART
    assert auto_part_bytes(biggest_tree) == MIN_PART
    with pytest.raises(ValueError, match="under the 2 MiB minimum"):
        auto_part_bytes(biggest_tree + 1)


def test_part_size_measures_a_real_tree_and_logs_it(repo: Path, caplog) -> None:
    _sized(repo / "big" / "weights.onnx", 50 * MIB)
    tree = tree_bytes(repo)[0]
    with caplog.at_level(logging.INFO, "training.hpvfg2.payload"):
        part = part_size("auto", repo)
    assert part == auto_part_bytes(tree)
    assert 64 * MIB - tree - part >= 4 * MIB
    assert f"working tree {tree / MIB:.2f} MiB in 4 files" in caplog.text
    assert part_size("5", repo) == 5 * MIB
    with pytest.raises(ValueError, match="use --part-mib auto"):
        part_size("14", repo)  # 50 + 14 + parts.json > 64: it could never travel
    for bad in ("0", "-3", "ten"):
        with pytest.raises(ValueError, match="--part-mib"):
            part_size(bad, repo)


def test_not_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot list the working tree"):
        tree_bytes(tmp_path)


def test_payload_cli_refuses_before_building_when_no_part_fits(repo: Path, capsys) -> None:
    from training.hpvfg2.payload import main

    _sized(repo / "big" / "weights.onnx", 58 * MIB + MIB // 2)  # 64 - 58.5 - 4 < 2 MiB
    out = repo / ".gpu" / "payload"
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--parts", str(repo / ".gpu" / "p"), "--repo", str(repo)])
    assert exit_info.value.code == 2
    assert "under the 2 MiB minimum" in capsys.readouterr().err
    assert not out.exists()  # refused before the (long) build


def test_plan_checks_built_parts_against_todays_tree(repo: Path, capsys) -> None:
    from training.hpvfg2.device_budget import main

    parts = repo / ".gpu" / "parts"
    (parts / "parts.json").write_text("{}")
    _sized(parts / "part-01" / "payload.tar.001", 2 * MIB)
    assert main(["--parts", str(parts), "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "call 1: carry parts.json + part-00 (9.00 MiB)" in out
    assert "call 2: carry part-01 (2.00 MiB)" in out
    assert "2 device calls" in out
    _sized(repo / "big" / "weights.onnx", 56 * MIB)  # the tree grew: 56 + 9 > 64 MiB
    assert main(["--parts", str(parts), "--repo", str(repo)]) == 2
    assert "over the limit" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--parts", str(repo / "nothing"), "--repo", str(repo)])
    assert exit_info.value.code == 2
