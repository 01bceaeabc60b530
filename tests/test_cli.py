"""The kfaar command line: --help everywhere, exit code 2 with a message for bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge_agent.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*prefix, name))
    return out


@pytest.mark.parametrize("command", _commands(build_parser()), ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: kfaar" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--root", "/no/such/folder"], "not a folder"),
        (["eval", "--anonymizer", "sparkles"], "unknown anonymizer"),
        (["eval", "--judge", "magic"], "unknown judge"),
        (["eval", "--judge", "onnx:/no/such/model.onnx"], "not found"),
        (["eval", "--limit", "0"], "--limit"),
        (["eval", "--out", "result.txt"], ".json"),
        (["eval", "--anonymizer", "blur:-1"], "positive"),
        (["recognizer", "export-arcface", "model.txt"], ".onnx"),
        (["eval", "--anonymizer", "hpvfg:fp16"], "unknown anonymizer"),
        (["train", "--out", "run", "--steps", "0"], "--steps"),
        (["train", "--out", "run", "--data-root", "/no/such/root"], "need /no/such/root/lfw"),
        (["export", "/no/such.pt", "--out", "b", "--version", "1"], "no checkpoint"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_triplet_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "t.txt").write_text("only/two.jpg fields.jpg\n")
    assert main(["eval", "--root", str(tmp_path), "--triplets", str(tmp_path / "t.txt")]) == 2
    assert "expected 'x1 x2 y'" in capsys.readouterr().err


def test_unknown_flag_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--frobnicate"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("var", "argv"),
    [
        ("KFAAR_PORT", ["serve"]),
        ("KFAAR_METRICS_PORT", ["serve"]),
        ("KFAAR_ANN_MIN_TEMPLATES", ["serve"]),
        ("KFAAR_CONSOLE_PORT", ["console", "run"]),
        ("KFAAR_CONSOLE_SESSION_MIN", ["console", "run"]),
        ("KFAAR_CHALLENGE_STEPS", ["edge", "run", "--claim", "x"]),
    ],
)
def test_a_malformed_number_in_the_environment_is_a_usage_error(monkeypatch, capsys, var, argv):
    monkeypatch.setenv(var, "lots")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid" in err and "'lots'" in err
