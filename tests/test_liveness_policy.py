"""Scopes that require liveness, on a real loopback service with signed requests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from authz_kit import Site, code, emb, unit

from auth_service.liveness_policy import LivenessPolicy
from kfaar_pb.v1 import auth_pb2

METHODS = ("Enroll", "Verify", "Identify")


def live(**kw) -> auth_pb2.LivenessEvidence:
    ev = dict(method="passive-minifasnet", score=0.93, threshold=0.6, passed=True,
              model_version="minifasnet-pair/1.0.0:fp32", views_scored=3)  # fmt: skip
    ev.update(kw)
    return auth_pb2.LivenessEvidence(**ev)


@pytest.fixture
def site(tmp_path: Path):
    s = Site(tmp_path / "kfaar.db")
    s.cfg = dataclasses.replace(s.cfg, liveness=LivenessPolicy(frozenset({"hq"})))
    s.restart()
    yield s
    s.stop()


def _client(site: Site, device: str, scope: str):
    token = site.token(f"app-{device}", scope, devices=[device], methods=METHODS)
    c = site.client(device, scope, token)
    c.enroll("alice", unit(1))
    return c


def _verify(c, liveness=None):
    req = auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
    if liveness is not None:
        req.liveness.CopyFrom(liveness)
    return c.call("Verify", req)


def test_scope_requiring_liveness_refuses_without_it_and_audits_why(site: Site) -> None:
    door = _client(site, "door-hq", "hq")
    with pytest.raises(grpc.RpcError) as exc:
        _verify(door)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "liveness required in scope 'hq': no liveness evidence" in exc.value.details()
    assert _verify(door, live()).match
    outcomes = [row[-1] for row in site.running.store.audit_log()]
    assert "refused: liveness: no liveness evidence" in outcomes
    ident = auth_pb2.IdentifyRequest(probe=emb(unit(1)))
    assert code(lambda: door.call("Identify", ident)) == grpc.StatusCode.FAILED_PRECONDITION
    ident = auth_pb2.IdentifyRequest(probe=emb(unit(1)), liveness=live())
    assert [c.subject_id for c in door.call("Identify", ident).candidates] == ["alice"]


@pytest.mark.parametrize(
    ("evidence", "why"),
    [
        (live(passed=False, score=0.1), "attempt not live"),
        (live(score=0.5), "below its threshold"),  # a device claiming a pass it did not earn
        (live(score=0.2, threshold=0.1), "below the service's floor"),  # a lax threshold
        (live(method="trust-me"), "unknown liveness method"),
        (live(method=""), "unknown liveness method"),
        (live(method="passive-minifasnet+active-challenge"), "without naming the action"),
    ],
)
def test_evidence_that_does_not_hold_is_refused(site: Site, evidence, why: str) -> None:
    door = _client(site, "door-hq", "hq")
    with pytest.raises(grpc.RpcError) as exc:
        _verify(door, evidence)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and why in exc.value.details()
    assert any(why in row[-1] for row in site.running.store.audit_log())


def test_evidence_altered_after_signing_fails_the_device_proof(site: Site) -> None:
    door = _client(site, "door-hq", "hq")
    req = auth_pb2.VerifyRequest(
        subject_id="alice", probe=emb(unit(1)), liveness=live(passed=False)
    )
    door.signed("Verify", req)
    req.liveness.passed = True  # a man in the middle flips the verdict
    bad = lambda: door.call("Verify", req, signed=False)  # noqa: E731
    assert code(bad) == grpc.StatusCode.UNAUTHENTICATED


def test_other_scopes_are_unaffected(site: Site) -> None:
    lobby = _client(site, "cam-lobby", "lobby")
    assert _verify(lobby).match


def test_stream_probes_are_held_to_the_same_rule(site: Site) -> None:
    door = _client(site, "door-hq", "hq")
    bare = door.signed("Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1))))
    good = door.signed(
        "Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)), liveness=live())
    )
    probes = [
        auth_pb2.AuthProbe(verify=bare, sequence=1),
        auth_pb2.AuthProbe(verify=good, sequence=2),
    ]
    out = list(door.stub.StreamAuthenticate(iter(probes), metadata=door.meta, timeout=10))
    assert "no liveness evidence" in out[0].error_message and out[1].verify.match


def test_policy_reads_scopes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KFAAR_REQUIRE_LIVENESS", " hq, vault ,")
    assert LivenessPolicy.from_env(["lab"]).require == {"hq", "vault", "lab"}


@pytest.fixture
def strict_site(tmp_path: Path):
    s = Site(tmp_path / "kfaar.db")
    s.cfg = dataclasses.replace(s.cfg, liveness=LivenessPolicy.from_env(["hq:both", "lab:active"]))
    s.restart()
    yield s
    s.stop()


BOTH = "passive-minifasnet+active-challenge"


@pytest.mark.parametrize(
    ("scope", "evidence", "why"),
    [
        # passive PAD alone let most real phone replays through: a strict scope wants both
        ("hq", live(), "scope requires the active challenge"),
        (
            "hq",
            live(method=BOTH, challenge="turn_left"),
            "challenge of 1 step(s)",
        ),
        ("hq", live(method=BOTH, challenge="turn_left,nod,turn_left"), "unknown challenge steps"),
        ("lab", live(method="active-challenge", challenge="turn_left,turn_left"), "requires 3"),
    ],
)
def test_a_scope_naming_its_methods_refuses_weaker_evidence(
    strict_site: Site, scope: str, evidence, why: str
) -> None:
    door = _client(strict_site, f"door-{scope}", scope)
    with pytest.raises(grpc.RpcError) as exc:
        _verify(door, evidence)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and why in exc.value.details()
    assert any(why in row[-1] for row in strict_site.running.store.audit_log())


def test_a_scope_naming_its_methods_accepts_what_it_names(strict_site: Site) -> None:
    steps = "turn_left,turn_right,turn_left"
    hq = _client(strict_site, "door-hq", "hq")
    assert _verify(hq, live(method=BOTH, challenge=steps)).match
    lab = _client(strict_site, "door-lab", "lab")
    assert _verify(
        lab, live(method="active-challenge", challenge=steps, score=1, threshold=1)
    ).match


def test_a_bad_liveness_mode_is_refused_on_the_command_line(monkeypatch, capsys) -> None:
    from edge_agent.cli import main

    assert LivenessPolicy.from_env(["hq:both"]).modes == {"hq": "both"}
    with pytest.raises(ValueError, match="SCOPE:MODE"):
        LivenessPolicy.from_env(["hq:sometimes"])
    monkeypatch.setenv("KFAAR_REQUIRE_LIVENESS", "hq:sometimes")
    assert main(["serve", "--insecure", "--port", "0", "--create", "--db", ":memory:"]) == 2
    assert "'hq:sometimes': use SCOPE or SCOPE:MODE" in capsys.readouterr().err
