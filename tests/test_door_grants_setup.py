"""Access grants end to end: the service's setting, no key, the key command, the standalone
check as a command, and `kfaar edge run` passing grants to its webhook and hook.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import grpc
import nacl.signing
import pytest
from authz_kit import ADMIN, THRESHOLD, VIRTUAL, Client, Site, emb, unit
from door_kit import (
    SECRET,
    VERIFIER,
    claims_of,
    decide,
    edge_client,
    grant_key,
    vg,
)

from auth_service.access_grant import check_ttl, key_id
from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc


def test_the_grant_lifetime_is_the_services_setting(site) -> None:
    site.cfg.grant_ttl_s = 2.5  # kfaar serve --grant-ttl 2.5
    site.restart()
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    reply = cam.call("Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1))))
    c = claims_of(reply.access_grant)
    assert c["exp"] - c["iat"] == 2500
    with pytest.raises(ValueError, match="grant-ttl"):
        check_ttl(0)
    with pytest.raises(ValueError, match="grant-ttl"):
        check_ttl(301)


def test_no_grant_without_a_service_key(postgres_url: str, tmp_path: Path) -> None:
    policy = Policy("hpvfg/1.0.0", {VIRTUAL: THRESHOLD})
    cfg = ServerConfig(tmp_path / "db", policy, port=0, admin_token=ADMIN, db_url=postgres_url,
                       allow_unsigned_store=True)  # fmt: skip
    running = start(cfg)
    try:
        assert running.store.service_key is None
        key = nacl.signing.SigningKey.generate()
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        admin = auth_pb2_grpc.AdminServiceStub(channel)
        meta = (("authorization", f"Bearer {ADMIN}"),)
        admin.RegisterDevice(auth_pb2.RegisterDeviceRequest(
            device_id="cam-1", verify_key=key.verify_key.encode()), metadata=meta)  # fmt: skip
        token = admin.CreateAppToken(auth_pb2.CreateAppTokenRequest(
            app_name="a", device_ids=["cam-1"], methods=["Enroll", "Verify"]),
            metadata=meta).token  # fmt: skip
        cam = Client(running.port, token, "cam-1", key)
        cam.enroll("alice", unit(1))
        reply = cam.call("Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1))))
        assert reply.match and reply.access_grant == b""
    finally:
        running.stop(0)
        running.store.close()


def _cli(stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VERIFIER), *args], input=stdin,
                          capture_output=True, timeout=60, check=False)  # fmt: skip


def test_grant_key_command_and_the_controller_cli(site, capsys, tmp_path) -> None:
    from edge_agent.cli import main

    key_file = tmp_path / "kfaar.db.key"
    assert main(["admin", "grant-key", "--service-key-file", str(key_file)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == grant_key(site).hex()
    assert f"grant key id {key_id(grant_key(site))}" in out.err
    assert main(["admin", "grant-key", "--service-key-file", str(key_file), "--base64"]) == 0
    b64 = capsys.readouterr().out.strip()
    assert base64.b64decode(b64) == grant_key(site)
    assert main(["admin", "grant-key", "--service-key-file", str(tmp_path / "none")]) == 2
    assert "cannot read the service key" in capsys.readouterr().err
    assert site.running.store.service_key.verify_key != grant_key(site)  # not the audit key

    (tmp_path / "grant.pub").write_text(b64 + "\n")
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    client = edge_client(site, cam)
    _, decision = decide(client, "alice", 1)
    body = json.dumps(decision).encode()
    args = ["--key-file", str(tmp_path / "grant.pub"), "--device", "cam-1",
            "--seen", str(tmp_path / "seen.json")]  # fmt: skip
    opened = _cli(body, *args)
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["attempt"] == decision["attempt_id"]
    again = _cli(body, *args)  # another process, the same grant: the seen file remembers
    assert again.returncode == 1 and "a replay" in again.stderr.decode()
    fake = _cli(json.dumps({**decision, "grant": None}).encode(), *args)
    assert fake.returncode == 1 and "no grant" in fake.stderr.decode()
    other = _cli(body, *args[:2], "--device", "cam-2", *args[4:])
    assert other.returncode == 1 and "not 'cam-2'" in other.stderr.decode()
    assert _cli(b"not json", *args).returncode == 1
    usage = _cli(body, "--key", "00", "--device", "cam-1", "--seen", str(tmp_path / "s2"))
    assert usage.returncode == 2 and "32 bytes" in usage.stderr.decode()
    assert _cli(body, "--device", "cam-1").returncode == 2
    client.close()


@pytest.mark.parametrize("skew", ["nan", "inf", "-1", "1e9"])
def test_a_skew_out_of_range_is_a_usage_error(site, tmp_path, skew: str) -> None:
    cam = site.client("cam-1")
    cam.enroll("alice", unit(1))
    client = edge_client(site, cam)
    _, decision = decide(client, "alice", 1)
    ran = _cli(json.dumps(decision).encode(), "--key", grant_key(site).hex(), "--device",
               "cam-1", "--seen", str(tmp_path / "seen.json"), "--skew", skew)  # fmt: skip
    # Before: nan and inf exit 1 with a traceback, -1 refused this fresh grant ("issued in
    # the future"), 1e9 opened (and lets a grant a year past its expiry in).
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "(--skew) must be 0 to 60 s" in ran.stderr.decode() and b"Traceback" not in ran.stderr
    client.close()


def test_the_verifier_needs_nothing_of_kfaar() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('vg', {str(VERIFIER)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert "nacl" in loaded
    for name in ("auth_service", "edge_agent", "kfaar_pb", "google", "grpc", "numpy"):
        assert name not in loaded, name


def test_kfaar_edge_run_passes_the_grant_to_its_webhook_and_hook(
    controllers, capsys, tmp_path, monkeypatch
) -> None:
    """The whole edge: a camera run whose accepted attempt opens the door once, by grant."""
    from edge_kit import start_edge_site

    from edge_agent.assets import asset_path
    from edge_agent.cli import main

    running = start_edge_site(tmp_path, monkeypatch, ["Enroll", "Verify"])
    try:
        (tmp_path / "webhook.key").write_bytes(SECRET)
        vk_grant = running.store.service_key.grant_verify_key
        (tmp_path / "grant.pub").write_text(vk_grant.hex())
        ctl = controllers(vk_grant, "cam-1")
        photo = str(sorted((asset_path("sample_faces") / "Alan_Greenspan").glob("*.jpg"))[0])
        assert main(["edge", "enroll", "--subject", "s-alan", "--source", photo]) == 0
        hook = f"{sys.executable} {VERIFIER} --key-file {tmp_path / 'grant.pub'} --device cam-1"
        run = ["edge", "run", "--source", photo, "--claim", "s-alan", "--liveness", "off",
               "--webhook", ctl.url, "--webhook-secret-file", str(tmp_path / "webhook.key"),
               "--on-accept", f"{hook} --seen {tmp_path / 'seen.json'}"]  # fmt: skip
        capsys.readouterr()
        assert main(run) == 0
        assert "1 attempts: 1 accepted" in capsys.readouterr().out
        assert len(ctl.opens) == 1 and not ctl.refusals
        opened = ctl.opens[0]
        assert opened["device"] == "cam-1" and opened["subject"] == "s-alan"
        # The hook got the same grant on stdin and the standalone check let it open.
        seen = json.loads((tmp_path / "seen.json").read_text())
        assert list(seen) == [opened["attempt"]]
        from edge_agent.door import Journal

        journal = Journal(tmp_path / "door.db")
        assert journal.state(opened["attempt"], "command") == "done"
        assert journal.state(opened["attempt"], "webhook") == "done"
        journal.close()
    finally:
        running.stop(0)


def test_every_replica_signs_grants_one_key_verifies(postgres_url: str, tmp_path: Path) -> None:
    first = Site(tmp_path / "db", db_url=postgres_url)  # both read tmp/pg-service.key
    second = Site(tmp_path / "db", db_url=postgres_url)
    try:
        assert grant_key(first) == grant_key(second)
        cam = first.client("cam-1")
        cam.enroll("alice", unit(1))
        same_cam = Client(second.running.port, cam.token, cam.device, cam.key)
        seen: dict[str, int] = {}
        for client in (cam, same_cam):
            reply = client.call(
                "Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
            )
            grant = base64.b64encode(reply.access_grant).decode()
            assert (
                vg.verify_grant(grant, grant_key(first), "cam-1", seen=seen)["subject"] == "alice"
            )
        assert len(seen) == 2
    finally:
        first.stop()
        second.stop()


def test_a_replica_behind_a_revoke_signs_no_grant_for_the_revoked(postgres_url, tmp_path) -> None:
    first = Site(tmp_path / "db", db_url=postgres_url)
    second = Site(tmp_path / "db", db_url=postgres_url)
    try:
        cam = first.client("cam-1")
        cam.enroll("alice", unit(1))
        on_second = Client(second.running.port, cam.token, cam.device, cam.key)
        identify = auth_pb2.IdentifyRequest(probe=emb(unit(1)))
        assert on_second.call("Identify", identify).access_grant  # loaded: alice is in it
        # Its follower lags (a lost notification waits for the poll; a stuck one longer).
        second.running.follower.stop()
        first.as_admin(cam).call("Revoke", auth_pb2.RevokeRequest(subject_id="alice"))
        reply = on_second.call("Identify", identify)
        # Before: a grant for alice, revoked, that opens her door until the follower catches up.
        assert not reply.access_grant, claims_of(reply.access_grant)
    finally:
        first.stop()
        second.stop()


def test_a_bad_grant_ttl_is_a_usage_error(monkeypatch, capsys) -> None:
    from edge_agent.cli import main

    assert main(["serve", "--insecure", "--grant-ttl", "0"]) == 2
    assert "--grant-ttl must be more than 0 and at most 300 seconds" in capsys.readouterr().err
    assert main(["serve", "--insecure", "--grant-ttl", "301"]) == 2
    monkeypatch.setenv("KFAAR_GRANT_TTL_S", "ten")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--insecure"])
    assert exc.value.code == 2 and "--grant-ttl" in capsys.readouterr().err
