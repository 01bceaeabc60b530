"""Door controllers that trust the service, not the camera: signed access grants, attacked.

Real parts only: a loopback service with a service key, the edge's own client and door
actions, and a real HTTP server acting as the door controller (tests/door_kit.py), which
checks each webhook with the standalone deploy/door_controller/verify_grant.py.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from authz_kit import Site, emb, unit
from door_kit import (
    PREFIX,
    claims_of,
    decide,
    door,
    edge_client,
    grant_key,
    vg,
)

from auth_service.access_grant import key_id
from kfaar_pb.v1 import auth_pb2


def test_an_accepted_attempt_opens_its_door_exactly_once(site, controllers, tmp_path) -> None:
    cam = site.client("cam-1", "hq")
    cam.enroll("alice", unit(1))
    ctl = controllers(grant_key(site), "cam-1")
    client = edge_client(site, cam)
    before = time.time()
    reply, decision = decide(client, "alice", 1)
    assert reply.match and reply.access_grant
    claims = claims_of(reply.access_grant)
    assert claims["device"] == "cam-1" and claims["scope"] == "hq"
    assert claims["subject"] == "alice" and claims["decision"] == "accept"
    assert claims["attempt"] == decision["attempt_id"] and claims["v"] == 1
    assert claims["exp"] - claims["iat"] == 10_000  # the default lifetime
    assert before * 1000 - 1 <= claims["iat"] <= time.time() * 1000 + 1
    assert claims["kid"] == key_id(grant_key(site))
    actions = door(ctl.url, tmp_path / "door.db")
    actions.fire(decision)
    actions.fire(decision)  # the same attempt again: the edge's journal sends nothing
    assert [c["attempt"] for c in ctl.opens] == [decision["attempt_id"]] and not ctl.refusals
    assert actions.journal.state(decision["attempt_id"], "webhook") == "done"
    client.close()


def test_a_faked_decision_with_a_valid_hmac_but_no_grant_opens_nothing(
    site, controllers, tmp_path
) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    fake = {"attempt_id": "f" * 32, "accepted": True, "claim": "alice", "device": "cam-1"}
    old = controllers(grant_key(site), "cam-1", need_grant=False)
    door(old.url, tmp_path / "a.db").fire(fake)
    assert len(old.opens) == 1  # the attack works on a controller that trusts the camera
    ctl = controllers(grant_key(site), "cam-1")
    actions = door(ctl.url, tmp_path / "b.db")
    actions.fire(fake)
    assert ctl.opens == [] and ctl.refusals == [
        "no grant: only a decision the service signed opens this door"
    ]
    assert actions.journal.state(fake["attempt_id"], "webhook") == "refused 403"
    # A genuine accept through the same door still opens it.
    client = edge_client(site, cam)
    door(ctl.url, tmp_path / "b.db").fire(decide(client, "alice", 1)[1])
    assert len(ctl.opens) == 1
    client.close()


def test_a_replayed_grant_opens_once(site, controllers, tmp_path) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    ctl = controllers(grant_key(site), "cam-1")
    client = edge_client(site, cam)
    _, decision = decide(client, "alice", 1)
    door(ctl.url, tmp_path / "a.db").fire(decision)
    # A compromised camera sends the same grant again under fresh attempt ids, bypassing
    # its own journal: the controller remembers the grant's attempt.
    for i in range(3):
        door(ctl.url, tmp_path / f"r{i}.db").fire({**decision, "attempt_id": f"again-{i}"})
    assert len(ctl.opens) == 1
    assert len(ctl.refusals) == 3 and all("a replay" in r for r in ctl.refusals)
    client.close()


def test_a_grant_from_another_devices_door_is_refused(site, controllers, tmp_path) -> None:
    cam1 = site.client("cam-1", "hq")
    cam1.enroll("alice", unit(1))
    cam2 = site.client("cam-2", "hq")  # the garage camera of the same site
    ctl = controllers(grant_key(site), "cam-1")
    client = edge_client(site, cam2)
    reply, decision = decide(client, "alice", 1)
    assert reply.match and claims_of(reply.access_grant)["device"] == "cam-2"
    door(ctl.url, tmp_path / "a.db").fire(decision)  # sent to the front door instead
    assert ctl.opens == [] and ctl.refusals == ["the grant is for device 'cam-2', not 'cam-1'"]
    client.close()


def test_an_expired_grant_is_refused(site, controllers, tmp_path) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    # The controller's clock reads 13 s later: past the 10 s lifetime and the 2 s skew.
    ctl = controllers(grant_key(site), "cam-1", clock=lambda: time.time() + 13)
    client = edge_client(site, cam)
    door(ctl.url, tmp_path / "a.db").fire(decide(client, "alice", 1)[1])
    assert ctl.opens == [] and len(ctl.refusals) == 1 and "expired" in ctl.refusals[0]
    client.close()


def test_a_grant_with_one_flipped_bit_is_refused(site, tmp_path) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    client = edge_client(site, cam)
    grant = decide(client, "alice", 1)[0].access_grant
    vk = grant_key(site)
    assert vg.verify_grant(base64.b64encode(grant).decode(), vk, "cam-1")["subject"] == "alice"
    refused = 0
    for byte in range(len(grant)):  # every byte of the signature and of the body
        bit = 1 << (byte % 8)
        bad = bytearray(grant)
        bad[byte] ^= bit
        with pytest.raises(vg.GrantRefused, match="bad signature"):
            vg.verify_grant(base64.b64encode(bad).decode(), vk, "cam-1", seen={})
        refused += 1
    assert refused == len(grant) > 64 + len(PREFIX)
    client.close()


def test_a_grant_signed_by_another_service_key_is_refused(site, controllers, tmp_path) -> None:
    (tmp_path / "other").mkdir()
    other = Site(tmp_path / "other" / "db")  # its own database, so its own service key
    try:
        cam = other.client("cam-1")  # the same device id, on another service
        cam.enroll("alice", unit(1))
        ctl = controllers(grant_key(site), "cam-1")
        client = edge_client(other, cam)
        reply, decision = decide(client, "alice", 1)
        assert reply.match and reply.access_grant
        door(ctl.url, tmp_path / "a.db").fire(decision)
        assert ctl.opens == [] and len(ctl.refusals) == 1
        assert ctl.refusals[0].startswith("bad signature: not signed by this door's grant key")
        assert key_id(grant_key(other)) in ctl.refusals[0]
        client.close()
    finally:
        other.stop()


def test_rejections_carry_no_grant(site) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    client = edge_client(site, cam)
    reply = client.call("Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(2))))
    assert not reply.match and reply.access_grant == b""
    found = client.call("Identify", auth_pb2.IdentifyRequest(probe=emb(unit(2)), top_k=3))
    assert not found.candidates and found.access_grant == b""
    # Identify with a match: a grant for the best candidate.
    found = client.call("Identify", auth_pb2.IdentifyRequest(probe=emb(unit(1)), top_k=3))
    assert [c.subject_id for c in found.candidates] == ["alice"]
    assert claims_of(found.access_grant)["subject"] == "alice"
    assert claims_of(found.access_grant)["attempt"]
    client.close()


def test_streamed_decisions_carry_grants_on_accepts_only(site) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    client = edge_client(site, cam)
    probes = [
        auth_pb2.AuthProbe(verify=auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1))),
                           sequence=1),
        auth_pb2.AuthProbe(verify=auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(3))),
                           sequence=2),
        auth_pb2.AuthProbe(identify=auth_pb2.IdentifyRequest(probe=emb(unit(1))), sequence=3),
    ]  # fmt: skip
    out = {d.sequence: d for d in client.stream(iter(probes))}
    vk = grant_key(site)
    first = vg.verify_grant(base64.b64encode(out[1].verify.access_grant).decode(), vk, "cam-1")
    assert first["attempt"].startswith("nonce:")  # no idempotency key: the proof's nonce
    assert not out[2].verify.match and out[2].verify.access_grant == b""
    third = claims_of(out[3].identify.access_grant)
    assert third["subject"] == "alice" and third["attempt"] != first["attempt"]
    client.close()


def test_a_failed_save_of_the_seen_file_never_forgets_an_open(
    site, tmp_path, monkeypatch, capsys
) -> None:
    import contextlib
    import errno
    import io
    import sys

    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    client = edge_client(site, cam)
    (first, _), (second, _) = decide(client, "alice", 1), decide(client, "alice", 1)
    argv = ["--key", grant_key(site).hex(), "--device", "cam-1", "--seen", str(tmp_path / "s")]

    def check(reply) -> int:
        body = json.dumps({"grant": base64.b64encode(reply.access_grant).decode()}).encode()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body)))
        return vg.main(argv)

    assert check(first) == 0  # opens, and the seen file records it
    real_write, failed = vg.os.write, []

    def disk_full(fd: int, data: bytes) -> int:
        failed.append(len(data))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vg.os, "write", disk_full)
    with contextlib.suppress(OSError):  # before: a traceback, which exits 1 too
        assert check(second) == 1  # cannot record the second attempt: it must not open
    assert failed, "the fault was never hit"
    said = capsys.readouterr().err
    monkeypatch.setattr(vg.os, "write", real_write)
    # Before: the save truncated the file first, so the first grant opened a second time.
    assert check(first) == 1 and "a replay" in capsys.readouterr().err
    assert "cannot record" in said
    client.close()
