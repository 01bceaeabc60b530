"""kfaar demo end to end, with every byte the edge sends captured and checked."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc

from edge_agent.demo import run_demo
from edge_agent.keystore import Keystore


class WireTap(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Record the serialized bytes of every request the edge sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def intercept_unary_unary(self, continuation, details, request):
        self.sent.append(request.SerializeToString())
        return continuation(details, request)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        def tapped():
            for r in request_iterator:
                self.sent.append(r.SerializeToString())
                yield r

        return continuation(details, tapped())


def test_demo_runs_end_to_end_and_sends_no_key_and_no_image(tmp_path: Path) -> None:
    keys = Keystore.create(tmp_path / "ks.json", device_secret=bytes(range(32)))
    tap = WireTap()
    summary = run_demo(tmp_path / "out", interceptors=(tap,), keys=keys)

    assert summary["enrolled"] == 8 and summary["attempts"] == 17
    counts = [
        summary[k]
        for k in ("genuine_accepts", "genuine_rejects", "impostor_accepts", "impostor_rejects")
    ]
    assert sum(counts) == 16 and counts[0] + counts[1] == 8
    assert not any("error" in d for d in summary["decisions"])
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert len(list((tmp_path / "out" / "frames").glob("*.jpg"))) == 17

    # Issue 12's bar for the default space and operating point: 90% in, nobody else.
    assert summary["space"] == "KEYED" and summary["operating_point"].endswith("KEYED FAR 1e-3")
    assert summary["genuine_accept_rate"] >= 0.9 and summary["impostor_accepts"] == 0
    reasons = {d["kind"]: d["reason"] for d in summary["decisions"] if not d["accepted"]}
    assert reasons["quality check"].startswith("rejected: face too poor: too blurred")
    assert reasons["impostor"].startswith("rejected: below threshold by 0.")
    # Issue 21: a simulated print, a simulated screen replay and a still photo against a
    # random challenge, each of an enrolled person claiming themselves, refused on the edge.
    attacks = summary["presentation_attacks"]
    assert [a["kind"] for a in attacks] == ["print (sim)", "replay (sim)", "still photo"]
    assert summary["presentation_attacks_refused"] == 3
    assert all(a["reason"].startswith("rejected: ") and not a["accepted"] for a in attacks)
    assert "challenge failed" in attacks[2]["reason"]

    assert len(tap.sent) == 8 + 16  # enrollments, then one fused probe per attempt
    secrets = [keys.key(e.name) for e in keys.entries()]
    assert len(secrets) == 8
    for payload in tap.sent:
        assert len(payload) < 2048  # an embedding and a proof: no room for a face image
        for key in secrets:
            for form in (key, key.hex().encode(), base64.b64encode(key)):
                assert form not in payload
    # KEYED sends z' = P(z, k): the original embedding z itself never travels.
    from edge_agent.assets import asset_path
    from edge_agent.face.detect import FaceDetector
    from edge_agent.face.image_io import load_image
    from edge_agent.recognizer import SystemRecognizer

    detector, recognizer = FaceDetector(), SystemRecognizer(threads=1)
    for photo in asset_path("sample_faces").glob("*/*.jpg"):
        image = load_image(photo)
        z = recognizer.embed(image, detector.primary(image).landmarks).astype("<f4")
        assert not any(z[:3].tobytes() in payload for payload in tap.sent)
