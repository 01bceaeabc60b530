"""The liveness gate inside ``kfaar edge run``'s attempt loop, with real door actions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.attempts import AttemptConfig, AttemptTracker
from edge_agent.door import DoorActions, DoorConfig
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import new_key
from edge_agent.live import Decision, run_attempts
from edge_agent.liveness.attacks import simulate
from edge_agent.liveness.gate import LivenessGate
from edge_agent.liveness.pad import PassiveLiveness
from edge_agent.pipeline import EdgePipeline

RECORD = (
    "import sys, pathlib; p = pathlib.Path(sys.argv[1]); p.write_bytes(sys.stdin.buffer.read())"
)


@pytest.fixture(scope="module")
def pipeline() -> EdgePipeline:
    return EdgePipeline(HpvfgAnonymizer(threads=1))


def _folder(tmp: Path, frames: list[np.ndarray]) -> Path:
    tmp.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp / f"f{i}.png"), f)
    return tmp


def _run(pipeline, source: Path, tmp_path: Path):
    sent, lines = [], []

    def decide(template, views, liveness):
        sent.append(liveness)
        return Decision(True, "ACCEPT", "test point")

    cfg = DoorConfig(
        on_accept=(sys.executable, "-c", RECORD, str(tmp_path / "accept.json")),
        on_reject=(sys.executable, "-c", RECORD, str(tmp_path / "reject.json")),
        journal=tmp_path / "door.db",
    )
    gate = LivenessGate(PassiveLiveness())
    tracker = AttemptTracker(AttemptConfig(timeout_s=600), liveness=gate.new_attempt)  # no clock
    door = DoorActions(cfg)
    tally = run_attempts(str(source), pipeline, new_key(), decide, lines.append, tracker,
                         door=door, context={"claim": "alice"})  # fmt: skip
    return tally, sent, "".join(lines)


def test_live_attempt_carries_its_evidence_and_opens_the_door(pipeline, sample_photos, tmp_path):
    photo = load_image(sample_photos[2])
    tally, sent, _ = _run(pipeline, _folder(tmp_path / "cam", [photo] * 3), tmp_path)
    assert tally.accepted == 1 and len(sent) == 1
    ev = sent[0]
    assert ev.passed and ev.method == "passive-minifasnet" and ev.views_scored == 3
    assert ev.score >= ev.threshold and ev.model_version.startswith("minifasnet-pair/")
    decision = json.loads((tmp_path / "accept.json").read_text())
    assert decision["accepted"] and decision["claim"] == "alice" and decision["liveness"]["passed"]
    assert not (tmp_path / "reject.json").exists()


def test_print_attack_is_refused_on_the_edge_and_sends_nothing(pipeline, sample_photos, tmp_path):
    rng = np.random.default_rng(5)
    photo = load_image(sample_photos[2])
    frames = [simulate("print", photo, rng) for _ in range(3)]
    tally, sent, out = _run(pipeline, _folder(tmp_path / "cam", frames), tmp_path)
    assert sent == [] and tally.rejected == 1 and tally.not_live == 1
    assert "rejected: presentation attack suspected" in out
    decision = json.loads((tmp_path / "reject.json").read_text())
    assert not decision["accepted"] and "presentation attack" in decision["reason"]
    assert "(1 not live)" in tally.summary()


def test_door_options_are_checked(tmp_path: Path) -> None:
    import argparse

    from edge_agent.door_cli import add_door_args, door_setup
    from edge_agent.liveness.challenge import DEFAULT_ACTIONS

    p = argparse.ArgumentParser()
    add_door_args(p)
    journal = ["--door-journal", str(tmp_path / "door.db")]
    with pytest.raises(ValueError, match="unknown actions"):
        door_setup(p.parse_args(["--liveness", "off", "--challenge", "nod", *journal]))
    with pytest.raises(ValueError, match="secret"):
        door_setup(
            p.parse_args(["--liveness", "off", "--webhook", "http://127.0.0.1:9/", *journal])
        )
    (tmp_path / "short").write_bytes(b"tiny")
    with pytest.raises(ValueError, match="16 bytes"):
        hook = [
            "--webhook",
            "http://127.0.0.1:9/",
            "--webhook-secret-file",
            str(tmp_path / "short"),
        ]
        door_setup(p.parse_args(["--liveness", "off", *hook, *journal]))
    args = ["--liveness", "off", "--challenge", "on", "--on-accept", "open-door --relay '2 a'"]
    gate, door = door_setup(p.parse_args([*args, *journal]))
    assert gate.passive is None and gate.actions == DEFAULT_ACTIONS
    assert door is not None and door.cfg.on_accept == ("open-door", "--relay", "2 a")
    with pytest.raises(ValueError, match="challenge-steps"):
        door_setup(p.parse_args(["--liveness", "off", "--challenge-steps", "0", *journal]))
    gate, _ = door_setup(p.parse_args(["--liveness", "off", "--challenge", "on",
                                       "--challenge-steps", "2", *journal]))  # fmt: skip
    assert gate.challenge.steps == 2 and gate.challenge.time_limit_s == 18.0
    gate, door = door_setup(p.parse_args(journal))  # the defaults: passive on, no actions
    assert gate.passive is not None and gate.actions == () and door is None


def test_the_challenge_prompts_each_step_and_sends_its_sequence() -> None:
    """A head that follows the prompts told through the gate passes; the sequence is sent."""
    from test_liveness_challenge import BLANK, FPS, head  # the synthetic 3-D head

    from edge_agent.liveness.challenge import ACTIONS

    shown: list[str] = []
    gate = LivenessGate(None, ACTIONS, prompt=shown.append)
    state = gate.new_attempt()
    yaw, target, since = 0.0, 0.0, None
    for i in range(int(gate.challenge.time_limit_s * FPS)):
        t = i / FPS
        if since is not None and t - since >= 0.5:
            yaw = target  # half a second after each prompt the head is where it was asked
        state.add(t, BLANK, head(yaw))
        if shown and shown[-1] != "<seen>":
            text, shown[-1] = shown[-1], "<seen>"
            since = t
            target = 25.0 if "left" in text else -25.0 if "right" in text else 0.0
        if state.ready:
            break
    live, reason, ev = state.verdict()
    assert live and reason == "live" and ev.method == "active-challenge", reason
    steps = ev.challenge.split(",")
    assert len(steps) == gate.challenge.steps and set(steps) <= set(ACTIONS)
    assert shown.count("<seen>") == 1 + 2 * len(steps)  # look, then a turn and a return each
