"""kfaar edge against a real service on loopback: enroll, run, verify-original, bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from edge_kit import ADMIN, SECRET, start_edge_site

from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from edge_agent.assets import asset_path
from edge_agent.capture import SourceError, frames
from edge_agent.cli import main
from edge_agent.hpvfg import Bundle
from edge_agent.keystore import Keystore


@pytest.fixture
def edge(tmp_path: Path, monkeypatch):
    """A running service, this device registered, and the edge's settings in the env."""
    running = start_edge_site(tmp_path, monkeypatch, ["Enroll", "Verify", "Identify", "Rekey"])
    yield running, tmp_path
    running.stop(0)


def test_enroll_run_and_verify_original(edge, capsys) -> None:
    running, tmp = edge
    person = asset_path("sample_faces") / "Hugh_Grant"
    first, second = sorted(person.glob("*.jpg"))
    (tmp / "enroll").mkdir()
    shutil.copy(first, tmp / "enroll")
    assert main(["edge", "enroll", "--subject", "s-hugh", "--source", str(tmp / "enroll")]) == 0
    assert "1 templates stored" in capsys.readouterr().out
    assert running.store.subject_templates("s-hugh")[1].shape == (1, 128)

    out = tmp / "virtual"
    args = ["edge", "run", "--source", str(second), "--claim", "s-hugh", "--save-frames", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 accepted" in printed or "1 rejected" in printed  # a real decision either way
    assert [p.name for p in out.iterdir()] == ["00000_virtual.jpg"]  # no original written

    args = ["edge", "verify-original", "--subject", "s-hugh", "--reference", str(first)]
    assert main([*args, "--source", str(out)]) == 0
    assert "at KVFA threshold" in capsys.readouterr().out


def test_identify_under_a_site_key(edge, capsys) -> None:
    faces = asset_path("sample_faces")
    for person in ("Alan_Greenspan", "Eliane_Karp"):
        photo = str(sorted((faces / person).glob("*.jpg"))[0])
        args = ["edge", "enroll", "--subject", person, "--site", "lobby", "--source", photo]
        assert main(args) == 0
    assert {e.name for e in Keystore.open(edge[1] / "ks.json", device_secret=SECRET).entries()} == {
        "lobby"
    }
    same = str(sorted((faces / "Alan_Greenspan").glob("*.jpg"))[0])
    assert main(["edge", "run", "--source", same, "--site", "lobby"]) == 0
    assert "Alan_Greenspan" in capsys.readouterr().out  # the enrolled photo itself


def test_edge_errors_are_clear(edge, capsys, tmp_path: Path) -> None:
    assert main(["edge", "run", "--source", "/no/such/video.mp4", "--claim", "nobody"]) == 2
    assert "no key named" in capsys.readouterr().err
    sample = str(next(asset_path("sample_faces").glob("*/*.jpg")))
    assert main(["edge", "enroll", "--subject", "s", "--source", "/no/such/folder"]) == 2
    assert "no such camera" in capsys.readouterr().err
    main(["edge", "enroll", "--subject", "s-x", "--source", sample])
    capsys.readouterr()
    assert main(["edge", "--device-id", "cam-9", "run", "--source", sample, "--claim", "s-x"]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_frame_sources(tmp_path: Path) -> None:
    folder = asset_path("sample_faces") / "Hugh_Grant"
    assert [label for label, _ in frames(str(folder))] == sorted(
        p.name for p in folder.glob("*.jpg")
    )
    with pytest.raises(SourceError):
        frames(str(tmp_path / "missing.mp4"))


def test_rekey_rotates_the_key_and_replaces_the_templates(edge, capsys, tmp_path: Path) -> None:
    running, tmp = edge
    first, second = sorted((asset_path("sample_faces") / "Hugh_Grant").glob("*.jpg"))
    assert main(["edge", "enroll", "--subject", "s-hugh", "--source", str(first)]) == 0
    before = running.store.subject_templates("s-hugh")[1]
    old_key = Keystore.open(tmp / "ks.json", device_secret=SECRET).key("s-hugh")

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 120, 3), 128, np.uint8))
    assert main(["edge", "rekey", "--subject", "s-hugh", "--source", str(blank)]) == 2
    assert "no face found" in capsys.readouterr().err
    assert Keystore.open(tmp / "ks.json", device_secret=SECRET).key("s-hugh") == old_key

    assert main(["edge", "rekey", "--subject", "s-hugh", "--source", str(second)]) == 0
    assert "key rotated, 1 templates stored" in capsys.readouterr().out
    keys = Keystore.open(tmp / "ks.json", device_secret=SECRET)
    assert keys.previous_key("s-hugh") == old_key and keys.key("s-hugh") != old_key
    after = running.store.subject_templates("s-hugh")[1]
    assert after.shape == (1, 128) and float(after[0] @ before[0]) < 0.999

    assert main(["edge", "rekey", "--subject", "nobody", "--source", str(second)]) == 2
    assert "no subject key named 'nobody'" in capsys.readouterr().err


def test_the_edge_runs_the_version_it_installed(edge, capsys, tmp_path: Path) -> None:
    running, _ = edge
    bundle = tmp_path / "bundle"
    shutil.copytree(Bundle.load().path, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "version": "1.0.1"}))
    key, registry = tmp_path / "publisher.key", tmp_path / "registry"
    assert main(["models", "keygen", str(key)]) == 0
    publish = ["models", "publish", str(bundle), "--key", str(key), "--registry", str(registry)]
    assert main(publish) == 0
    trust = ["--trust", str(key.with_suffix(".pub"))]
    assert main(["edge", "update", "--registry", str(registry), *trust]) == 0
    sample = str(next(asset_path("sample_faces").glob("*/*.jpg")))
    # The service still runs 1.0.0: the edge now sends 1.0.1 templates, which it refuses.
    assert main(["edge", "enroll", "--subject", "s-new", "--source", sample]) == 2
    assert "'hpvfg/1.0.1' does not match the service's 'hpvfg/1.0.0'" in capsys.readouterr().err
    assert not running.store.subject_templates("s-new")[0]


def test_run_sends_one_signed_request_per_attempt_of_fused_frames(edge, capsys, tmp_path) -> None:
    from edge_agent.face.image_io import load_image

    running, _ = edge
    first, second = sorted((asset_path("sample_faces") / "Alan_Greenspan").glob("*.jpg"))
    assert main(["edge", "enroll", "--subject", "s-alan", "--source", str(first)]) == 0
    image = load_image(second)
    cam, poor = tmp_path / "cam", tmp_path / "poor"
    cam.mkdir(), poor.mkdir()
    cv2.imwrite(str(cam / "f0.png"), image)
    cv2.imwrite(str(cam / "f1.png"), cv2.GaussianBlur(image, (0, 0), 4))
    cv2.imwrite(str(cam / "f2.png"), cv2.convertScaleAbs(image, alpha=0.9, beta=10))
    cv2.imwrite(str(poor / "p0.png"), cv2.GaussianBlur(image, (0, 0), 4))

    def verifies() -> int:
        return sum(row[2] == "Verify" for row in running.store.audit_log())

    capsys.readouterr()
    assert main(["edge", "run", "--source", str(cam), "--claim", "s-alan"]) == 0
    out = capsys.readouterr().out
    assert "f1.png\tdropped: too blurred" in out
    assert "f0.png..f2.png (2 used, 1 dropped; end of source)\tACCEPT" in out
    assert "1 attempts: 1 accepted" in out and "hpvfg/1.0.0 KEYED fused FAR 1e-3" in out
    assert verifies() == 1  # two usable frames, one signed decision request, decided as fused

    args = ["edge", "run", "--source", str(cam), "--claim", "s-alan", "--attempt-frames", "0.1"]
    assert main(args) == 0  # each usable frame is enough on its own: two attempts
    assert "2 attempts: 2 accepted" in capsys.readouterr().out and verifies() == 3

    assert main(["edge", "run", "--source", str(poor), "--claim", "s-alan"]) == 0
    out = capsys.readouterr().out
    assert "rejected: face too poor: too blurred in 1 of 1 frames" in out
    assert "1 face too poor" in out and verifies() == 3  # nothing sent for it


def _restart(running, tmp: Path):
    """Stop the service and return a function that starts it again on the same port and DB."""
    running.stop(0)
    policy = Policy.from_bundle(Bundle.load())
    return lambda: start(ServerConfig(tmp / "db", policy, port=running.port, admin_token=ADMIN))


def test_writes_queued_while_down_are_flushed_or_sent_by_run(edge, capsys) -> None:
    running, tmp = edge
    first, second = sorted((asset_path("sample_faces") / "Hugh_Grant").glob("*.jpg"))
    assert main(["edge", "enroll", "--subject", "s-up", "--source", str(first)]) == 0
    start_again = _restart(running, tmp)
    for subject in ("s-q1", "s-q2"):
        assert main(["edge", "enroll", "--subject", subject, "--source", str(first)]) == 0
    assert capsys.readouterr().out.count("queued in the outbox") == 2
    assert main(["edge", "flush", "--timeout", "1"]) == 1  # still down: both kept
    assert "0 queued writes delivered, 2 still queued" in capsys.readouterr().out
    back = start_again()
    try:
        # kfaar edge run delivers the queue in the background while it authenticates.
        assert main(["edge", "run", "--source", str(second), "--claim", "s-up"]) == 0
        deadline = time.monotonic() + 20  # the channel reconnects within its back-off

        def delivered() -> bool:
            return all(
                back.store.subject_templates(s)[1].shape == (1, 128) for s in ("s-q1", "s-q2")
            )

        while not delivered() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert delivered()
        capsys.readouterr()
        assert main(["edge", "flush"]) == 0
        assert "0 queued writes delivered, 0 still queued" in capsys.readouterr().out
    finally:
        back.stop(0)
