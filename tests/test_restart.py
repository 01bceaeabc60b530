"""Replays and guess budgets across a real restart of the server on the same database."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from authz_kit import Site, code, emb, unit

from kfaar_pb.v1 import auth_pb2


@pytest.fixture(params=["sqlite", "postgres"])
def site(tmp_path: Path, request):
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    s = Site(tmp_path / "kfaar.db", db_url=url)
    yield s
    s.stop()


def test_signed_enroll_and_verify_cannot_be_replayed_after_a_restart(site: Site) -> None:
    app = site.client("door-1")
    enroll = app.signed(
        "Enroll", auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(1))])
    )
    verify = app.signed("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(1))))
    app.call("Enroll", enroll, signed=False)
    assert app.call("Verify", verify, signed=False).match
    site.restart()
    app = site.reconnect(app)
    replayed = grpc.StatusCode.UNAUTHENTICATED
    assert code(lambda: app.call("Enroll", enroll, signed=False)) == replayed
    assert code(lambda: app.call("Verify", verify, signed=False)) == replayed
    assert site.running.store.subject_templates("s-a")[1].shape == (1, 128)  # stored once
    assert app.verify("s-a", unit(1))  # freshly signed requests still pass


def test_guess_budgets_continue_after_a_restart(site: Site) -> None:
    app = site.client("door-1")
    app.enroll("s-a", unit(1))
    cam = site.client("cam")
    for _ in range(4):
        assert not cam.verify("s-a", unit(2))
    assert code(lambda: cam.verify("s-a", unit(1))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(16):
        cam.identify(unit(3))  # 4 + 16 misses: the device's budget of 20 is spent
    site.restart()
    cam = site.reconnect(cam)
    assert code(lambda: cam.verify("s-a", unit(1))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code(lambda: cam.identify(unit(1))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert site.reconnect(app).verify("s-a", unit(1))
