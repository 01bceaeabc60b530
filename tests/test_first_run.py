"""What a new user sees on a first run: help that lists everything, folders whose odd files
are counted, corrupt images named as such, and progress bars that stay out of the tables.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from edge_agent.cli import build_parser, main

KEY = bytes(range(32))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _actions(command: str) -> list[str]:
    return list(_subcommands(_subcommands(build_parser())[command]))


def test_help_lists_every_edge_action(capsys) -> None:
    actions = _actions("edge")
    assert {"enroll", "rekey", "run", "verify-original", "update"} <= set(actions)
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    summary = re.search(r"^\s+edge\s+(.+?)\n\s{4}\S", top, re.M | re.S).group(1)
    assert all(a in summary for a in actions), summary
    with pytest.raises(SystemExit):
        main(["edge", "--help"])
    listed = capsys.readouterr().out
    assert all(re.search(rf"^\s+{a}\s", listed, re.M) for a in actions)


def test_eval_defaults_to_the_shipped_model() -> None:
    args = build_parser().parse_args(["eval"])
    assert args.anonymizer == "hpvfg" and args.dataset == "auto"


def test_folder_source_counts_other_files_and_names_corrupt_images(
    sample_photos: list[Path], tmp_path: Path, caplog, capfd
) -> None:
    from edge_agent.capture import frames

    shutil.copy(sample_photos[0], tmp_path / "a.jpg")
    data = sample_photos[1].read_bytes()
    (tmp_path / "b.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # decodes, grey
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "clip.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="edge_agent.capture"):
        got = [label for label, _ in frames(str(tmp_path))]
    assert got == ["a.jpg"]
    messages = [r.getMessage() for r in caplog.records]
    assert f"{tmp_path}: skipped: 2 not images (clip.json, notes.txt)" in messages
    assert any("b.jpg: corrupt JPEG" in m for m in messages) and len(messages) == 2
    assert capfd.readouterr().err == ""  # no libjpeg warning behind the log


def _on_a_terminal(argv: list[str], env: dict) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal; return what it showed."""
    leader, follower = pty.openpty()
    # A real terminal has a size; a fresh pty's 0x0 would make tqdm draw zero-width bars.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_bars_stay_out_of_the_table_and_no_empty_video_bar(
    sample_photos: list[Path], tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in sample_photos[:3]:
        shutil.copy(p, src / p.name)
    (tmp_path / "key").write_bytes(KEY)
    env = {k: v for k, v in os.environ.items() if k != "KFAAR_NO_PROGRESS"}
    env["OMP_NUM_THREADS"] = "1"
    argv = [sys.executable, "-m", "edge_agent.cli", "anonymize", str(src),
            "-o", str(tmp_path / "out"), "--key-file", str(tmp_path / "key"),
            "--workers", "1"]  # fmt: skip
    code, shown = _on_a_terminal(argv, env)
    assert code == 0, shown
    assert "images" in shown  # a bar was drawn: stderr is a terminal
    assert "videos" not in shown  # none for a run without videos
    # What the terminal shows of each line is what follows its last carriage return.
    lines = [line.rsplit("\r", 1)[-1] for line in shown.replace("\r\n", "\n").split("\n")]
    table = [line for line in lines if line.startswith("ok\t")]
    grammar = r"ok\t\S+\t(1 face|(0|[2-9]|\d\d+) faces)\t"  # "1 face", never "1 faces"
    assert len(table) == 3 and all(re.fullmatch(grammar, t) for t in table), lines
    assert "3 ok, 0 failed, 0 skipped" in lines
