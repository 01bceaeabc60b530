"""``kfaar edge liveness-trial``: the door's challenge measured over a source, end to end.

No camera here: a still face recorded to a video (every trial must fail, through the real
CLI in a subprocess), and a "puppet" made of AT&T photos of one person that turns when the
door says so (it must pass), whose recording replayed without following must fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.attempts import estimate_yaw
from edge_agent.cli import main
from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.liveness.challenge import ACTIONS, ChallengeConfig, parallax
from edge_agent.liveness.gate import LivenessGate
from edge_agent.liveness.trial import TrialRunner
from edge_agent.liveness.trial_cli import _public
from edge_agent.liveness.trial_report import merge, wilson, write_report

ROOT = Path(__file__).resolve().parents[1]
FPS = 10.0


def _env() -> dict[str, str]:
    """The environment for ``kfaar`` from this checkout, the door's variables unset."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFAAR_CHALLENGE")}
    env.pop("KFAAR_LIVENESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _kfaar(*args: str) -> subprocess.CompletedProcess:
    """Run ``kfaar`` from this checkout in a subprocess."""
    cmd = [sys.executable, "-m", "edge_agent.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def _still_video(photo: Path, out: Path, seconds: float) -> Path:
    image = cv2.imread(str(photo))
    h, w = image.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    for _ in range(int(seconds * FPS)):
        writer.write(image)
    writer.release()
    return out


def test_a_still_face_fails_every_trial_through_the_cli(sample_faces: Path, tmp_path: Path):
    video = _still_video(sample_faces / "Hugh_Grant" / "Hugh_Grant_0005.jpg",
                         tmp_path / "still.avi", 16.0)  # fmt: skip
    out = tmp_path / "report"
    args = ["--source", str(video), "--trials", "3", "--pause", "1", "--out", str(out)]
    res = _kfaar("edge", "liveness-trial", *args)  # the door's defaults: passive PAD, 3 steps
    assert res.returncode == 0, res.stderr
    assert len(re.findall(r"^trial \d/3: FAIL after", res.stdout, re.M)) == 3, res.stdout
    prompts = re.findall(r"^\d\d:\d\d:\d\d\.\d{3} trial (\d)/3 t=[\d.]+s: please (.+)$",
                         res.stderr, re.M)  # fmt: skip
    assert [p for p in prompts if p[1] == "face the camera"] == [(str(k), "face the camera")
                                                                for k in (1, 2, 3)]  # fmt: skip
    report = json.loads((out / "trial.json").read_text())
    assert report["summary"]["trials"] == 3 and report["summary"]["passed"] == 0
    assert sum(report["summary"]["failures"].values()) == 3
    assert report["settings"]["steps"] == 3 and report["settings"]["liveness"] == "passive"
    for t in report["trials"]:
        assert t["outcome"] == "fail" and t["passive"]["passed"], t["reason"]
        assert re.fullmatch(r"no reaction to 'turn your head to your (left|right)'", t["failure"])
        assert t["steps"][0]["onset_after_s"] is None and len(t["steps"]) == 1
        assert t["frames"] == len(t["timeline"]["landmarks"]) > 10
        assert np.shape(t["timeline"]["landmarks"][0]) == (5, 2)
    md = (out / "trial.md").read_text()
    assert "| 3 | 0 | 0.0% | 0.0%-56.1% | - |" in md
    assert sorted(p.name for p in out.iterdir()) == ["trial.json", "trial.md"]  # no frame


class Puppet:
    """A person made of photos: resting, turned left, turned right; follows each prompt.

    It switches to the asked pose a reaction time (0.3-0.7 s) after each prompt, as
    ``benchmarks/liveness_challenge_photos.py`` does; frames come at 10 a second on its
    own clock, three noisy copies of each photo in turn. ``shown`` keeps what it showed.
    """

    def __init__(self, views: dict[str, list[np.ndarray]], seed: int, seconds: float = 300.0):
        self.rng, self.views = np.random.default_rng(seed), views
        self.frames, self.t, self.pose = int(seconds * FPS), 0.0, "rest"
        self.pending: list[tuple[float, str]] = []
        self.shown: list[tuple[str, float, np.ndarray]] = []

    def prompted(self, text: str) -> None:
        pose = "left" if "left" in text else "right" if "right" in text else "rest"
        self.pending.append((self.t + self.rng.uniform(0.3, 0.7), pose))

    def __iter__(self):
        for i in range(self.frames):
            self.t = i / FPS
            while self.pending and self.pending[0][0] <= self.t:
                self.pose = self.pending.pop(0)[1]
            self.shown.append((f"puppet#{i}", self.t, self.views[self.pose][i % 3]))
            yield self.shown[-1]


def _noisy(image: np.ndarray, rng) -> list[np.ndarray]:
    """Three copies with camera-like noise: YuNet's points jitter a little between them."""
    return [np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
            for _ in range(3)]  # fmt: skip


def _att_people(att_dir: Path, det: FaceDetector, least: float = 0.13) -> list[dict]:
    """Noisy views of AT&T people whose photos turn each way by ``least`` eye spans.

    Resting: the most frontal photo; left and right: the photos turned furthest from it,
    kept only if every noisy copy shows the turn (one jittered frame would make even a
    perfect follower "come back before the prompt").
    """
    people = []
    for k, folder in enumerate(sorted(att_dir.glob("s*"), key=lambda p: int(p.name[1:]))):
        shots = []
        for p in sorted(folder.glob("*.pgm")):
            im = cv2.resize(cv2.imread(str(p)), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            try:
                shots.append((im, det.primary(im).landmarks))
            except NoFaceError:
                continue
        if len(shots) < 3:
            continue
        rest = min(shots, key=lambda s: abs(estimate_yaw(s[1])))
        turns = sorted(shots, key=lambda s: parallax(rest[1], s[1]))
        rng = np.random.default_rng(k)
        views = {"rest": _noisy(rest[0], rng), "left": _noisy(turns[-1][0], rng),
                 "right": _noisy(turns[0][0], rng)}  # fmt: skip
        try:
            seen = {pose: [parallax(rest[1], det.primary(v).landmarks) for v in vs]
                    for pose, vs in views.items()}  # fmt: skip
        except NoFaceError:
            continue
        if min(seen["left"]) >= least and max(seen["right"]) <= -least:
            people.append(views)
    return people


def test_a_source_that_follows_the_prompts_passes_and_its_replay_fails(att_dir: Path, tmp_path):
    det = FaceDetector()
    people = _att_people(att_dir, det)[:2]
    assert people, "no AT&T person turns both ways by 0.13 eye spans"
    gate = LivenessGate(None, ACTIONS, ChallengeConfig())  # the door's default challenge
    for k, poses in enumerate(people):
        puppet = Puppet(poses, seed=k)
        run = TrialRunner(gate, 3, pause_s=2.0, detector=det).run(puppet)
        assert [t["outcome"] for t in run.trials] == ["pass"] * 3, [t["reason"] for t in run.trials]
        for t in run.trials:
            assert len(t["steps"]) == 3 and t["duration_s"] < gate.challenge.time_limit_s
            for s in t["steps"]:  # the puppet reacts 0.3-0.7 s after a prompt, frames 0.1 s apart
                assert 0.3 <= s["onset_after_s"] <= 0.8 and 0.3 <= s["back_after_s"] <= 0.8, s
                assert s["peak"] >= gate.challenge.turn
        # The same frames at the same times, but deaf to the prompts: a replay. A replay passes
        # a 3-step challenge with a chance of at most 0.004 per trial (replay_pass_chance).
        replay = TrialRunner(gate, 3, pause_s=2.0, detector=det).run(iter(puppet.shown))
        assert len(replay.trials) == 3 and all(t["outcome"] == "fail" for t in replay.trials)
        meta = {"presentation": "live", "person": f"att{k}", "source": "puppet",
                "started_utc": "-", "ended": run.ended, "settings": _settings(gate)}  # fmt: skip
        write_report(tmp_path / f"live{k}", meta, run.trials)
        write_report(tmp_path / f"replay{k}", {**meta, "presentation": "replay"}, replay.trials)
    merged = merge(sorted(tmp_path.iterdir()))["presentations"]
    n = 3 * len(people)
    assert merged["live"]["trials"] == n and merged["live"]["errors"] == 0
    assert merged["replay"]["trials"] == n and merged["replay"]["accepted"] == 0


def _settings(gate: LivenessGate) -> dict:
    c = gate.challenge
    return {"actions": list(gate.actions), "steps": c.steps, "step_time_s": c.step_time_s,
            "time_limit_s": c.time_limit_s, "liveness": "off", "pause_s": 2.0}  # fmt: skip


def _trial(i: int, passed: bool, why: str | None = None, seconds: float = 9.0) -> dict:
    return {"index": i, "outcome": "pass" if passed else "fail", "reason": why or "live",
            "failure": why, "duration_s": seconds, "sequence": ["turn_left"],
            "steps": [{"onset_after_s": 0.5}]}  # fmt: skip


def test_summarize_counts_bpcer_and_apcer_per_presentation(tmp_path: Path, capsys) -> None:
    gate = LivenessGate(None, ACTIONS, ChallengeConfig())
    meta = {"started_utc": "-", "source": "0", "ended": "done", "settings": _settings(gate)}
    slow = "no reaction to 'turn your head to your left'"
    live = [_trial(1, True, seconds=8.0), _trial(2, True, seconds=10.0), _trial(3, False, slow),
            _trial(4, True, seconds=12.0), _trial(5, True, seconds=9.0)]  # fmt: skip
    write_report(tmp_path / "p01", {**meta, "presentation": "live", "person": "p01"}, live)
    write_report(tmp_path / "p02", {**meta, "presentation": "live", "person": "p02"},
                 [_trial(1, True), _trial(2, False, "turned the wrong way")])  # fmt: skip
    replay = [_trial(i, False, "moved before the prompt") for i in range(1, 4)] + [_trial(4, True)]
    write_report(tmp_path / "replay", {**meta, "presentation": "replay"}, replay)
    one = json.loads((tmp_path / "p01" / "trial.json").read_text())["summary"]
    assert (one["trials"], one["passed"], one["median_pass_s"]) == (5, 4, 9.5)
    assert one["failures"] == {slow: 1}
    assert "| 5 | 4 | 80.0% | 37.6%-96.4% | 9.5 |" in (tmp_path / "p01" / "trial.md").read_text()

    dirs = [str(tmp_path / d) for d in ("p01", "p02", "replay")]
    out = tmp_path / "merged"
    assert main(["edge", "liveness-trial", "--summarize", *dirs, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| live | BPCER | 2 | 2 | 7 | 5 | 2 | 2/7 = 28.6% |" in table
    assert "| replay | APCER | 1 | - | 4 | 1 | 3 | 1/4 = 25.0% |" in table
    rows = json.loads((out / "summary.json").read_text())["presentations"]
    assert rows["live"]["failures"] == {slow: 1, "turned the wrong way": 1}
    assert rows["replay"]["failures"] == {"moved before the prompt": 3}
    assert (out / "summary.md").read_text().count("| replay |") == 1


def test_wilson_interval_and_the_trials_a_95_percent_claim_needs() -> None:
    lo, hi = wilson(4, 5)
    assert (round(lo, 3), round(hi, 3)) == (0.376, 0.964)  # textbook values for 4/5
    assert wilson(60, 60)[0] < 0.95 <= wilson(73, 73)[0]  # docs/LIVENESS.md: 73/73, not 60/60
    assert wilson(108, 110)[0] < 0.95 <= wilson(109, 110)[0]  # one failure: 110 trials


def test_bad_input_is_a_clear_error(tmp_path: Path, sample_faces: Path, capsys, monkeypatch):
    for k in ("KFAAR_CHALLENGE", "KFAAR_CHALLENGE_STEPS", "KFAAR_LIVENESS"):
        monkeypatch.delenv(k, raising=False)
    video = _still_video(sample_faces / "Hugh_Grant" / "Hugh_Grant_0005.jpg",
                         tmp_path / "still.avi", 1.0)  # fmt: skip
    photo = str(sample_faces / "Hugh_Grant" / "Hugh_Grant_0005.jpg")
    junk = tmp_path / "junk.avi"
    junk.write_text("not a video")
    base = ["edge", "liveness-trial", "--liveness", "off", "--out", str(tmp_path / "o")]
    cases = {
        ("--source", "/no/such/camera.mp4"): "no such camera",
        ("--source", photo): "is an image",
        ("--source", str(tmp_path)): "is a folder",
        ("--source", str(video), "--trials", "0"): "--trials must be at least 1",
        ("--source", str(video), "--pause", "-1"): "--pause must be zero or more",
        ("--source", str(video), "--challenge-time", "0"): "--challenge-time must be positive",
        ("--source", str(video), "--steps", "9"): "--challenge-steps must be between 1 and 8",
        ("--source", str(video), "--challenge", "off"): "turn it on",
        ("--source", str(video), "--challenge", "nod"): "unknown actions",
        ("--source", str(video), "--presentation", "print|A4"): "--presentation must be",
        ("--source", str(junk)): "cannot open",
        ("--summarize", str(tmp_path)): "cannot read a trial report",
    }
    for extra, message in cases.items():
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main(["edge", "liveness-trial", "--trials", "3"]) == 2
    assert "--source and --out are required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:  # not a number: argparse's own usage error
        main([*base, "--source", str(video), "--trials", "many"])
    assert bad.value.code == 2 and "invalid int value" in capsys.readouterr().err
    black = tmp_path / "black.avi"  # a video without a face: nothing to decide
    writer = cv2.VideoWriter(str(black), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 64))
    for _ in range(10):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    assert main([*base, "--source", str(black)]) == 2
    assert "no trial was decided" in capsys.readouterr().err
    if "GUI:                           NONE" in cv2.getBuildInformation():
        assert main([*base, "--source", str(video), "--show"]) == 2
        assert "--show needs a display" in capsys.readouterr().err


def test_a_camera_url_is_reported_without_its_password() -> None:
    assert _public("rtsp://admin:s3cret@10.0.0.5:554/stream1") == "rtsp://10.0.0.5:554/stream1"
    assert _public("0") == "0" and _public("door.mp4") == "door.mp4"


def test_frames_are_written_only_with_save_frames(sample_faces: Path, tmp_path: Path) -> None:
    video = _still_video(sample_faces / "Hugh_Grant" / "Hugh_Grant_0005.jpg",
                         tmp_path / "still.avi", 6.0)  # fmt: skip
    out, frames = tmp_path / "report", tmp_path / "frames"
    args = ["edge", "liveness-trial", "--source", str(video), "--trials", "1",
            "--liveness", "off", "--out", str(out), "--save-frames", str(frames)]  # fmt: skip
    assert main(args) == 0
    trial = json.loads((out / "trial.json").read_text())["trials"][0]
    assert len(list((frames / "trial_001").glob("*.jpg"))) == trial["frames"] > 10
    assert json.loads((out / "trial.json").read_text())["frames_saved"] is True


def test_ctrl_c_stops_the_run_and_still_writes_the_report(sample_faces: Path, tmp_path: Path):
    video = _still_video(sample_faces / "Hugh_Grant" / "Hugh_Grant_0005.jpg",
                         tmp_path / "still.avi", 300.0)  # fmt: skip
    out = tmp_path / "report"
    args = ["--source", str(video), "--trials", "100", "--pause", "1", "--liveness", "off",
            "--out", str(out)]  # fmt: skip
    cmd = [sys.executable, "-m", "edge_agent.cli", "edge", "liveness-trial", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())  # fmt: skip
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("trial 1/100: FAIL"), first
        proc.send_signal(signal.SIGINT)
        rest, _err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    report = json.loads((out / "trial.json").read_text())
    assert report["ended"].startswith("stopped by the operator after")
    assert 1 <= report["summary"]["trials"] < 100
    assert f"| {report['summary']['trials']} | 0 | 0.0% |" in (out / "trial.md").read_text()
