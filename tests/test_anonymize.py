"""kfaar anonymize on a folder of real faces with the shipped models: layout, sizes,
sidecars, anonymity and synchronism by the independent dlib judge, and bad input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from media_faces import PEOPLE, make_clip, photo

from edge_agent.cli import main
from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import Bundle
from edge_agent.keys import fingerprint

KEY = bytes(range(32))
NAMES = list(PEOPLE)[:5]
DLIB_SAME = 0.6  # dlib's own same-person distance


@pytest.fixture(scope="module")
def run(sample_faces: Path, tmp_path_factory) -> tuple[Path, Path, int, str]:
    """Anonymize two photos each of five people, nested in sub-folders, under one key."""
    tmp = tmp_path_factory.mktemp("anon")
    src, out = tmp / "in", tmp / "out"
    for n, name in enumerate(NAMES):
        for which in (0, 1):
            image = photo(sample_faces, name, which)
            dst = src / f"cam{n % 2}" / ("day" if which else "") / image.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, dst)
    (tmp / "key").write_bytes(KEY)
    args = ["anonymize", str(src), "-o", str(out), "--key-file", str(tmp / "key")]
    code = main([*args, "--summary", str(tmp / "summary.json")])
    return src, out, code, (tmp / "summary.json").read_text()


def _pairs(src: Path, out: Path) -> list[tuple[Path, Path]]:
    return [(p, out / p.relative_to(src)) for p in sorted(src.rglob("*.jpg"))]


def test_folder_is_mirrored_with_same_sizes_and_sidecars(run) -> None:
    src, out, code, summary = run
    assert code == 0
    assert json.loads(summary)["counts"] == {"ok": 10, "failed": 0, "skipped": 0}
    pairs = _pairs(src, out)
    assert len(pairs) == 10
    for a, b in pairs:
        assert b.is_file(), b
        assert load_image(b).shape == load_image(a).shape
        side = json.loads(b.with_name(b.name + ".json").read_text())
        assert side["model"]["version"] == Bundle.load().version
        assert side["key_fingerprints"] == [fingerprint(KEY)]
        assert side["faces"]
        replaced = [f for f in side["faces"] if f["mode"] != "suspect"]  # suspects: blurred
        assert {f["key_fingerprint"] for f in replaced} == {fingerprint(KEY)}
        assert KEY.hex() not in json.dumps(side)
    assert not list(out.rglob(".*part*"))


def test_each_output_face_is_detected_and_judged_someone_else(run) -> None:
    from training.evaluation.judges import DlibJudge, locate

    src, out, _, _ = run
    detector, originals, virtuals = FaceDetector(), [], []
    for a, b in _pairs(src, out):
        x, v = load_image(a), load_image(b)
        face = detector.primary(x)
        found = detector.detect(v)
        cx, cy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
        near = [f for f in found if abs(f.box[0] + f.box[2] / 2 - cx) < face.box[2] / 3
                and abs(f.box[1] + f.box[3] / 2 - cy) < face.box[3] / 3]  # fmt: skip
        assert near, f"{b}: the virtual face is not detected"
        ref = locate(x, face)  # same place in both: the judge must not miss for free
        originals.append((x, ref))
        virtuals.append((v, ref))
    judge = DlibJudge(workers=1)
    dist = np.linalg.norm(judge.embed(originals) - judge.embed(virtuals), axis=1)
    # Measured on these ten sample faces: 0.57 to 0.88, 8 of 10 beyond dlib's rule (the
    # model's anonymity is 0.95 on the whole dev set, docs/MODEL_CARD.md).
    assert (dist > DLIB_SAME).mean() >= 0.8 and dist.mean() > 0.65, dist.round(3)


def test_one_key_same_person_same_virtual_person(run) -> None:
    """Synchronism and differentiation under one key, by the dlib judge on virtual faces.

    The shipped model's synchronism AUC is ~0.9, so the claim tested is on averages:
    measured 0.53 mean distance for one person's two virtual faces, 0.72 across people.
    """
    from training.evaluation.judges import DlibJudge, locate

    src, out, _, _ = run
    detector, items = FaceDetector(), []
    for name in NAMES:
        for which in (0, 1):
            a = next(src.rglob(PEOPLE[name][which]))
            x, v = load_image(a), load_image(out / a.relative_to(src))
            items.append((v, locate(x, detector.primary(x))))
    e = DlibJudge(workers=1).embed(items)
    n = len(NAMES)
    same = [np.linalg.norm(e[2 * i] - e[2 * i + 1]) for i in range(n)]
    other = [np.linalg.norm(e[2 * i] - e[2 * j + 1]) for i in range(n) for j in range(n) if i != j]
    assert np.mean(same) < np.mean(other) - 0.1, (np.mean(same), np.mean(other))
    assert np.median(same) < DLIB_SAME


def test_bad_input_fails_per_file_and_leaves_no_partial_output(
    sample_faces: Path, tmp_path: Path, capsys
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "ok").mkdir(parents=True)
    (src / "blocked").mkdir()
    shutil.copy(photo(sample_faces, NAMES[0], 0), src / "ok" / "good.jpg")
    shutil.copy(photo(sample_faces, NAMES[1], 0), src / "blocked" / "face.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (src / "notes.txt").write_text("not a picture")
    cv2.imwrite(str(src / "wall.png"), np.full((240, 320, 3), 128, np.uint8))
    make_clip(photo(sample_faces, NAMES[2], 0), tmp_path / "clip.avi", frames=12)
    data = (tmp_path / "clip.avi").read_bytes()
    (src / "cut.avi").write_bytes(data[: len(data) // 2])
    out.mkdir()
    (out / "blocked").write_text("a file where the output folder should be")
    (tmp_path / "key").write_bytes(KEY)
    code = main(["anonymize", str(src), "-o", str(out), "--key-file", str(tmp_path / "key")])
    assert code == 2  # broken.jpg and cut.avi are bad input; the others are still done
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    status = {Path(line.split("\t")[1]).name: line for line in lines if "\t" in line}
    assert status["good.jpg"].startswith("ok")
    for name, why in {
        "broken.jpg": "not a readable image",
        "wall.png": "no face",
        "cut.avi": "truncated",
        "face.jpg": "cannot write",
    }.items():
        assert status[name].startswith("failed") and why in status[name], status[name]
    assert lines[-2:] == [
        "1 ok, 4 failed, 0 skipped",
        "skipped: 1 file not images or videos (notes.txt)",
    ]
    # Each error is printed once, in the table; stderr only sums up the bad inputs.
    assert captured.err.splitlines() == ["kfaar anonymize: 2 inputs corrupt or unreadable"]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["blocked", "ok/good.jpg", "ok/good.jpg.json"]


def test_exit_codes_tell_bad_input_from_failed_work(
    sample_faces: Path, tmp_path: Path, capfd
) -> None:
    """README: bad input exits 2; a readable image without a face exits 1; success 0."""
    data = photo(sample_faces, NAMES[0], 0).read_bytes()
    (tmp_path / "corrupt.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((240, 320, 3), 128, np.uint8))
    (tmp_path / "key").write_bytes(KEY)
    key = ["--key-file", str(tmp_path / "key")]
    assert main(["anonymize", str(tmp_path / "corrupt.jpg"), "-o", str(tmp_path / "a"), *key]) == 2
    out, err = capfd.readouterr()  # the process's own stdout/stderr: libjpeg writes there
    assert out.splitlines()[0].startswith("failed\t") and "corrupt JPEG" in out
    assert "1 face" not in out and "0 faces" in out
    assert err.splitlines() == ["kfaar anonymize: 1 input corrupt or unreadable"]
    assert main(["anonymize", str(tmp_path / "wall.png"), "-o", str(tmp_path / "b"), *key]) == 1
    assert "no face found" in capfd.readouterr().out
    good = photo(sample_faces, NAMES[0], 0)
    assert main(["anonymize", str(good), "-o", str(tmp_path / "c"), *key]) == 0
    assert "\t1 face\t" in capfd.readouterr().out  # not "1 faces"


def test_fallbacks_for_an_image_without_a_face(tmp_path: Path) -> None:
    wall = np.tile(np.arange(320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    cv2.imwrite(str(tmp_path / "wall.png"), wall)
    (tmp_path / "key").write_bytes(KEY)
    base = ["anonymize", str(tmp_path / "wall.png"), "--key-file", str(tmp_path / "key")]
    assert main([*base, "-o", str(tmp_path / "skip"), "--fallback", "skip"]) == 0
    assert not (tmp_path / "skip" / "wall.png").exists()
    assert main([*base, "-o", str(tmp_path / "blur"), "--fallback", "blur"]) == 0
    blurred = load_image(tmp_path / "blur" / "wall.png")
    assert blurred.shape == wall.shape and not np.array_equal(blurred, wall)


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    missing = ["anonymize", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "o")]
    assert main([*missing, "--key-file", str(tmp_path / "nokey")]) == 2
    (tmp_path / "short").write_bytes(b"123")
    assert main([*missing, "--key-file", str(tmp_path / "short")]) == 2
    (tmp_path / "key").write_bytes(KEY)
    inside = ["anonymize", str(tmp_path), "-o", str(tmp_path / "o"), "--key-file"]
    assert main([*inside, str(tmp_path / "key")]) == 2
    assert "error" in capsys.readouterr().err


def test_key_map_gives_enrolled_people_their_own_key(sample_faces: Path, tmp_path: Path) -> None:
    enrolled, other = NAMES[0], NAMES[1]
    (tmp_path / "in").mkdir()
    shutil.copy(photo(sample_faces, enrolled, 1), tmp_path / "in" / "a.jpg")
    shutil.copy(photo(sample_faces, other, 1), tmp_path / "in" / "b.jpg")
    shutil.copy(photo(sample_faces, enrolled, 0), tmp_path / "ref.jpg")
    subject_key = bytes(range(100, 132))
    (tmp_path / "subject.key").write_text(subject_key.hex() + "\n")
    (tmp_path / "site.key").write_bytes(KEY)
    rows = [{"name": "s-1", "reference": "ref.jpg", "key_file": "subject.key"}]
    (tmp_path / "map.json").write_text(json.dumps({"subjects": rows}))
    code = main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                 "--key-map", str(tmp_path / "map.json"),
                 "--key-file", str(tmp_path / "site.key")])  # fmt: skip
    assert code == 0

    def primary_fp(name: str) -> tuple[str, str]:
        side = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        best = max(side["faces"], key=lambda f: f["box"][2] * f["box"][3])
        assert "s-1" not in json.dumps(side)  # no subject names next to face boxes
        return best["key_kind"], best["key_fingerprint"]

    assert primary_fp("a.jpg") == ("subject", fingerprint(subject_key))
    assert primary_fp("b.jpg") == ("site", fingerprint(KEY))


def test_a_keystore_site_key_and_its_exported_key_file_agree(
    sample_faces: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from edge_agent.keystore import Keystore

    Keystore.create(tmp_path / "ks.json", device_secret=KEY)
    (tmp_path / "secret").write_bytes(KEY)
    monkeypatch.setenv("KFAAR_KEYSTORE", str(tmp_path / "ks.json"))
    monkeypatch.setenv("KFAAR_DEVICE_SECRET_FILE", str(tmp_path / "secret"))
    assert main(["keys", "add", "lobby", "--site"]) == 0
    exported = tmp_path / "lobby.key"
    assert main(["keys", "export-key", "lobby", "--out", str(exported)]) == 0
    assert exported.stat().st_mode & 0o777 == 0o600 and len(exported.read_bytes()) == 32
    assert main(["keys", "export-key", "lobby", "--out", str(exported)]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err
    image = photo(sample_faces, NAMES[0], 0)
    base = ["anonymize", str(image)]
    assert main([*base, "-o", str(tmp_path / "a"), "--site-key", "lobby"]) == 0
    assert main([*base, "-o", str(tmp_path / "b"), "--key-file", str(exported)]) == 0
    a, b = (tmp_path / d / image.name for d in ("a", "b"))
    assert np.array_equal(load_image(a), load_image(b))
    side = json.loads(Path(f"{a}.json").read_text())
    assert side["faces"][0]["key_fingerprint"] == fingerprint(exported.read_bytes())


def test_suspected_faces_are_blurred_not_left(lfw_dir: Path, tmp_path: Path) -> None:
    # A portrait with a second person cut off at the bottom-left edge (YuNet: 0.94, 0.48).
    src = lfw_dir / "Gerhard_Schroeder" / "Gerhard_Schroeder_0028.jpg"
    (tmp_path / "key").write_bytes(KEY)
    base = ["anonymize", str(src), "--key-file", str(tmp_path / "key")]
    assert main([*base, "-o", str(tmp_path / "on")]) == 0
    assert main([*base, "-o", str(tmp_path / "off"), "--suspect-score", "0.6"]) == 0
    faces = json.loads((tmp_path / "on" / f"{src.name}.json").read_text())["faces"]
    assert [f["mode"] for f in faces] == ["detected", "suspect"]
    assert "suspect" not in (tmp_path / "off" / f"{src.name}.json").read_text()
    x, y, w, h = (round(v) for v in faces[1]["box"])
    region = np.s_[max(y, 0) : y + h, max(x, 0) : x + w]
    original = load_image(src)[region].astype(np.float32)
    on, off = (load_image(tmp_path / d / src.name)[region].astype(float) for d in ("on", "off"))
    assert np.abs(on - original).mean() > 8  # blurred beyond JPEG noise
    assert np.abs(off - original).mean() < 4  # left as it was without suspect blurring
    assert main([*base, "-o", str(tmp_path / "x"), "--suspect-score", "0.9"]) == 2
