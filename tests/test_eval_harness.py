"""The real evaluation harness on real LFW triplets: baselines are told apart, nulls are null."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.cli import main

# DESIGN.md section 4: the keys every result must carry.
DESIGN_KEYS = {
    "n_triplets",
    "judge",
    "threshold",
    "anonymity",
    "diversity",
    "differentiation",
    "synchronism_auc",
    "synchronism_eer",
    "virtual_verify_auc",
    "detection_rate",
    "pose_error_yaw",
    "pose_error_pitch",
    "pose_error_roll",
    "expression_agreement",
    "kvfa_crr",
    "kvfa_far",
    "kvfa_auc",
    "wrong_key_accept",
    "brisque_original",
    "brisque_virtual",
    "ms_per_face",
}
KEY_ONLY = ("diversity",)
KVFA = ("kvfa_crr", "kvfa_far", "kvfa_auc", "wrong_key_accept")


@pytest.fixture(scope="module")
def dev_eval(lfw_dir: Path, splits_dir: Path):
    """Return a function that runs ``kfaar eval`` on the LFW dev triplets and reads the JSON."""

    def run(out: Path, *args: str) -> dict:
        triplets = splits_dir / "lfw_dev_triplets.txt"
        argv = ["eval", "--root", str(lfw_dir), "--triplets", str(triplets), "--out", str(out)]
        assert main([*argv, *args]) == 0
        return json.loads(out.read_text())

    return run


@pytest.fixture(scope="module")
def run_eval(dev_eval, tmp_path_factory: pytest.TempPathFactory):
    out_dir = tmp_path_factory.mktemp("eval")
    results: dict[str, dict] = {}

    def run(anonymizer: str) -> dict:
        if anonymizer not in results:
            out = out_dir / f"{anonymizer.replace(':', '_')}.json"
            results[anonymizer] = dev_eval(
                out, "--limit", "12", "--anonymizer", anonymizer, "--seed", "11"
            )
        return results[anonymizer]

    return run


def test_identity_is_not_anonymous_and_keeps_the_pose(run_eval) -> None:
    r = run_eval("identity")
    assert set(r) >= DESIGN_KEYS
    assert r["n_triplets"] == 12 and r["judge"] == "dlib"
    assert r["judge_auc_original"] > 0.95
    assert r["anonymity"] < 0.1
    assert r["detection_rate"] == 1.0
    assert max(r["pose_error_yaw"], r["pose_error_pitch"], r["pose_error_roll"]) < 2.0
    assert r["synchronism_auc"] > 0.9  # the same people, judged the same


def test_keyless_anonymizers_report_key_metrics_as_null(run_eval) -> None:
    r = run_eval("blur")
    for key in KEY_ONLY + KVFA:
        assert r[key] is None, key


def test_blur_is_more_anonymous_than_identity_and_degrades_quality(run_eval) -> None:
    blur, ident = run_eval("blur:10"), run_eval("identity")
    assert blur["anonymity"] > ident["anonymity"] + 0.3
    assert blur["brisque_virtual"] > ident["brisque_virtual"]
    assert blur["expression_agreement"] < ident["expression_agreement"]


def test_pixelate_breaks_detection(run_eval) -> None:
    pix = run_eval("pixelate:6")
    assert pix["anonymity"] > 0.9
    assert pix["detection_rate"] < 0.9


def test_keyed_scramble_recovers_with_the_key_only(run_eval) -> None:
    r = run_eval("scramble")
    # Recovery goes through two resamplings and block seams: CRR 0.88 on the full dev set.
    assert r["kvfa_crr"] > 0.7 and r["kvfa_auc"] > 0.95
    assert r["kvfa_far"] < 0.1
    assert set(r["wrong_key_accept"]) == {"1", "3", "5", "16"}
    assert all(v <= 0.05 for v in r["wrong_key_accept"].values())
    assert r["anonymity"] > 0.9


def test_report_files_are_written(dev_eval, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    dev_eval(out, "--limit", "3", "--workers", "1")
    for suffix in (".md", "_grid.png", "_roc.png"):
        assert Path(f"{out.with_suffix('')}{suffix}").stat().st_size > 1000
    assert "| anonymity |" in out.with_suffix(".md").read_text()


def test_any_arcface_style_onnx_model_can_judge(dev_eval, tmp_path: Path) -> None:
    from training.recognizer.export import export_arcface_style

    model = export_arcface_style(tmp_path / "arcface_style.onnx")
    r = dev_eval(tmp_path / "onnx.json", "--limit", "8", "--judge", f"onnx:{model}")
    assert r["judge"] == "onnx:arcface_style.onnx"
    assert r["judge_auc_original"] > 0.95 and r["anonymity"] < 0.2
