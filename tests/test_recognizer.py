"""The torch/ONNX port of dlib's recognizer: file parsing, parity with dlib, accuracy."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.recognizer import SAME_PERSON_THRESHOLD, SystemRecognizer, l2_normalize
from training.datasets import read_lfw_pairs
from training.evaluation import metrics
from training.evaluation.judges import OnnxJudge, _dlib_models, dlib_chip, locate
from training.recognizer import dlib_format

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def net() -> dlib_format.DlibNet:
    return dlib_format.load()


@pytest.fixture(scope="module")
def plain() -> SystemRecognizer:
    """The port alone, without flip averaging: what dlib itself computes."""
    return SystemRecognizer(flip_average=False)


def test_parser_reads_the_whole_network(net: dlib_format.DlibNet) -> None:
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14 and kinds[-1] == "fc"
    assert net.input_size == 150
    assert net.loss["distance_threshold"] == pytest.approx(0.6)
    assert net.loss["margin"] == pytest.approx(0.04)
    assert net.input_mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)


def test_parser_rejects_truncated_and_foreign_files() -> None:
    data = dlib_format.find_model_file().read_bytes()
    with pytest.raises(dlib_format.DlibFormatError, match="end of file"):
        dlib_format.parse(data[: len(data) // 2])
    with pytest.raises(dlib_format.DlibFormatError):
        dlib_format.parse(b"\x01\x01\x01\x05hello" + data[20:200])
    shape_predictor = dlib_format.find_model_file("shape_predictor_5_face_landmarks.dat")
    with pytest.raises(dlib_format.DlibFormatError):
        dlib_format.parse(shape_predictor.read_bytes())


@pytest.fixture(scope="module")
def lfw_chips(lfw_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return 210 (dlib RGB chip, YuNet-aligned BGR chip) pairs from distinct LFW people."""
    detector = FaceDetector()
    from edge_agent.face.align import DLIB_150, align

    out = []
    for path in sorted(lfw_dir.glob("*/*_0001.jpg"))[::20][:210]:
        image = load_image(path)
        ref = locate(image, detector.primary(image))
        out.append((dlib_chip(image, ref), align(image, ref.face.landmarks, DLIB_150).chip))
    return out


def test_onnx_port_matches_dlib_on_210_lfw_chips(lfw_chips, plain: SystemRecognizer) -> None:
    facerec = _dlib_models()[2]
    reference = np.stack([np.asarray(facerec.compute_face_descriptor(c)) for c, _ in lfw_chips])
    ours = plain.embed_chips(np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2BGR) for c, _ in lfw_chips]))
    cos = (l2_normalize(reference) * ours).sum(1)
    assert len(cos) >= 200
    assert cos.min() >= 0.999


def test_torch_port_matches_its_onnx_export(lfw_chips, net, plain: SystemRecognizer) -> None:
    from training.recognizer.dlib_resnet import from_dlib

    model = from_dlib(net)
    bgr = np.stack([c for _, c in lfw_chips[:16]])
    x = torch.from_numpy(bgr[..., ::-1].transpose(0, 3, 1, 2).copy()).float()
    with torch.no_grad():
        expected = l2_normalize(model(x).numpy())
    np.testing.assert_allclose(plain.embed_chips(bgr), expected, atol=1e-5)


def test_edge_pipeline_accuracy_and_operating_threshold(lfw_dir: Path, splits_dir: Path) -> None:
    """The default edge recognizer (YuNet chips, flip averaging) on 301 LFW pairs."""
    pairs = read_lfw_pairs(splits_dir / "pairs_dev_only.txt")[::18]  # both kinds of pair
    detector, system = FaceDetector(), SystemRecognizer()
    cache: dict[str, np.ndarray] = {}

    def emb(rel: str) -> np.ndarray:
        if rel not in cache:
            image = load_image(lfw_dir / rel)
            cache[rel] = system.embed(image, detector.primary(image).landmarks)
        return cache[rel]

    scores = np.array([emb(a) @ emb(b) for a, b, _ in pairs])
    same = np.array([s for _, _, s in pairs])
    accuracy, _ = metrics.cross_validated_accuracy(scores, same)
    assert accuracy >= 0.98
    assert metrics.auc(scores[same], scores[~same]) >= 0.995
    # The shipped threshold (FMR 1e-3 on other images) holds on these pairs too.
    assert metrics.accept_rate(scores[~same], SAME_PERSON_THRESHOLD) <= 0.01
    assert metrics.accept_rate(scores[same], SAME_PERSON_THRESHOLD) >= 0.85


def test_arcface_style_export_works_as_an_onnx_judge(tmp_path: Path, lfw_dir: Path) -> None:
    from training.recognizer.export import export_arcface_style

    judge = OnnxJudge(export_arcface_style(tmp_path / "arcface_style.onnx"))
    detector = FaceDetector()
    people = [p for p in sorted(lfw_dir.iterdir()) if len(list(p.glob("*.jpg"))) >= 2][:12]
    items = []
    for person in people:
        for path in sorted(person.glob("*.jpg"))[:2]:
            image = load_image(path)
            items.append((image, locate(image, detector.primary(image))))
    e = judge.embed(items)
    same = judge.score(e[0::2], e[1::2])
    diff = judge.score(e[0::2], np.roll(e[1::2], 1, axis=0))
    assert metrics.auc(same, diff) > 0.95


def test_onnx_judge_refuses_a_model_with_the_wrong_input(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="112"):
        OnnxJudge(path)


def test_the_package_ships_the_recognizer_for_torch_free_edges() -> None:
    from edge_agent.recognizer import recognizer_onnx_path

    path = recognizer_onnx_path()
    assert path.parent.name == "models" and path.parent.parent.name == "assets"
    # What it computes is pinned by test_torch_port_matches_its_onnx_export and by the
    # parity test against dlib, which both run on this packaged file.
