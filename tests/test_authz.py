"""Authorization: scoped devices and tokens, admin-only revoke, template caps, audit rows."""

from __future__ import annotations

import grpc
import nacl.signing
import pytest
from authz_kit import ADMIN, Client, Site, code, emb, unit

from kfaar_pb.v1 import auth_pb2


def test_a_device_of_another_scope_cannot_take_over_a_subject(site: Site) -> None:
    # The attack of issue 13: enroll your own face into alice, verify as her, revoke her.
    owner = site.client("door-a", "site-a")
    owner.enroll("alice", unit(1))
    thief = site.client("door-b", "site-b")
    grant = site.token("ops-b", "site-b", methods=["Revoke"])
    thief_ops = site.reconnect(thief)
    thief_ops.meta = (("authorization", f"Bearer {grant}"),)

    probe = auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
    assert code(lambda: thief.call("Verify", probe)) == grpc.StatusCode.NOT_FOUND
    rekey = auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(unit(9))])
    assert code(lambda: thief.call("Rekey", rekey)) == grpc.StatusCode.NOT_FOUND
    revoke = auth_pb2.RevokeRequest(subject_id="alice")
    assert code(lambda: thief_ops.call("Revoke", revoke)) == grpc.StatusCode.NOT_FOUND
    assert thief.identify(unit(1)) == []  # Identify searches the caller's scope only

    thief.enroll("alice", unit(9))  # this is site-b's own "alice", a different subject
    assert thief.verify("alice", unit(9))
    assert not owner.verify("alice", unit(9))  # site-a's alice did not gain a template
    assert owner.verify("alice", unit(1))
    assert owner.identify(unit(9)) == []
    assert owner.identify(unit(1)) == ["alice"]


def test_revoke_needs_the_admin_token_or_an_explicit_grant(site: Site) -> None:
    app = site.client("door-1")
    app.enroll("s-a", unit(1))
    app.enroll("s-b", unit(2))
    revoke = auth_pb2.RevokeRequest(subject_id="s-a")
    assert code(lambda: app.call("Revoke", revoke)) == grpc.StatusCode.PERMISSION_DENIED
    assert app.verify("s-a", unit(1))
    assert site.as_admin(app).call("Revoke", revoke).templates_removed == 1
    ops = site.reconnect(app)
    ops.meta = (("authorization", f"Bearer {site.token('ops', methods=['Revoke'])}"),)
    revoke_b = auth_pb2.RevokeRequest(subject_id="s-b")
    # Another app's grant is not enough: s-b belongs to the app that enrolled it (issue 20).
    assert code(lambda: ops.call("Revoke", revoke_b)) == grpc.StatusCode.PERMISSION_DENIED
    grant = site.token("app-door-1", devices=["door-1"], methods=["Enroll", "Revoke"])
    ops.meta = (("authorization", f"Bearer {grant}"),)  # the owner's token, re-issued
    assert ops.call("Revoke", revoke_b).templates_removed == 1


def test_a_token_works_only_with_its_own_devices_and_scope(site: Site) -> None:
    door1 = site.client("door-1", "lobby")
    door1.enroll("s-a", unit(1))
    door2 = site.client("door-2", "lobby", token=door1.token)  # door-1's token on door-2
    assert code(lambda: door2.verify("s-a", unit(1))) == grpc.StatusCode.PERMISSION_DENIED
    other = site.client("door-3", "garage", token=site.token("lobby-app", "lobby"))
    assert code(lambda: other.verify("s-a", unit(1))) == grpc.StatusCode.PERMISSION_DENIED
    verify_only = site.reconnect(door1)
    verify_only.meta = (
        ("authorization", f"Bearer {site.token('v', 'lobby', methods=['Verify'])}"),
    )
    assert verify_only.verify("s-a", unit(1))
    enroll = auth_pb2.EnrollRequest(subject_id="s-b", templates=[emb(unit(2))])
    assert code(lambda: verify_only.call("Enroll", enroll)) == grpc.StatusCode.PERMISSION_DENIED
    # The stream checks every probe the same way.
    probe = door2.signed("Verify", auth_pb2.VerifyRequest(subject_id="s-a", probe=emb(unit(1))))
    out = list(
        door2.stub.StreamAuthenticate(
            iter([auth_pb2.AuthProbe(verify=probe, sequence=1)]), metadata=door2.meta, timeout=10
        )
    )
    assert out[0].error_code == grpc.StatusCode.PERMISSION_DENIED.value[0]


@pytest.mark.parametrize(
    ("scope", "methods"),
    [("bad scope!", []), ("x" * 65, []), ("lobby", ["Delete"])],
    ids=["space", "too long", "unknown method"],
)
def test_bad_scopes_and_grants_are_refused(site: Site, scope: str, methods: list) -> None:
    meta = (("authorization", "Bearer admin-secret-token"),)
    req = auth_pb2.CreateAppTokenRequest(app_name="x", scope=scope, methods=methods)
    with pytest.raises(grpc.RpcError) as exc:
        site.admin.CreateAppToken(req, metadata=meta)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    if not methods:
        dev = auth_pb2.RegisterDeviceRequest(device_id="d", verify_key=bytes(32), scope=scope)
        with pytest.raises(grpc.RpcError) as exc:
            site.admin.RegisterDevice(dev, metadata=meta)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_templates_per_subject_are_capped_in_total(site: Site) -> None:
    app = site.client("door-1")
    app.enroll("s-a", *[unit(i) for i in range(30)])
    for _ in range(5):  # the 200 x 32 Enrolls: each one past the cap is refused
        more = auth_pb2.EnrollRequest(subject_id="s-a", templates=[emb(unit(99))] * 3)
        assert code(lambda m=more: app.call("Enroll", m)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    app.enroll("s-a", unit(40), unit(41))
    assert site.running.store.subject_templates("s-a")[1].shape == (32, 128)
    rekey = auth_pb2.RekeyRequest(subject_id="s-a", templates=[emb(unit(50))] * 32)
    assert app.call("Rekey", rekey).templates_stored == 32  # rekey replaces, within the cap


def test_every_subject_change_writes_an_audit_row(site: Site) -> None:
    app = site.client("door-1", "lobby")
    app.enroll("s-a", unit(1), unit(2))
    app.call("Rekey", auth_pb2.RekeyRequest(subject_id="s-a", templates=[emb(unit(3))]))
    site.as_admin(app).call("Revoke", auth_pb2.RevokeRequest(subject_id="s-a"))
    rows = [r[1:] for r in site.running.store.audit_log() if r[2] != "RegisterDevice"]
    changes = [r for r in rows if r[1] in ("Enroll", "Rekey", "Revoke")]
    assert [(d, m, s, o) for d, m, s, o in changes] == [
        ("door-1", "Enroll", "lobby/s-a", "2 stored"),
        ("door-1", "Rekey", "lobby/s-a", "1 stored"),
        ("door-1", "Revoke", "lobby/s-a", "1 removed"),
    ]


def test_devices_and_tokens_of_an_older_database_land_in_the_default_scope(tmp_path) -> None:
    import sqlite3

    from auth_service.store import MIGRATIONS
    from auth_service.store_sqlite import SqliteStore

    db = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO devices VALUES ('door-1', ?, 0)", (b"k" * 32,))
    db.execute("INSERT INTO app_tokens VALUES ('app', ?, 0)", (b"h" * 32,))
    db.close()
    store = SqliteStore(tmp_path / "old.db")
    try:
        assert store.device("door-1") == (b"k" * 32, "default")
        # It keeps exactly what it had (issue 20): unbound means shared, old default methods.
        methods = ["Enroll", "Identify", "Rekey", "Verify"]
        assert store.token_row(b"h" * 32) == ("app", "default", [], methods, True)
    finally:
        store.close()


def test_kfaar_admin_registers_scoped_devices_and_bound_tokens(site: Site, tmp_path, capsys):
    from edge_agent.cli import main

    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN + "\n")
    base = ["admin", "--server", f"127.0.0.1:{site.running.port}", "--admin-token-file"]
    base.append(str(token_file))
    key = nacl.signing.SigningKey.generate()
    vk = key.verify_key.encode().hex()
    assert main([*base, "register-device", "door-9", vk, "--scope", "hq"]) == 0
    assert main([*base, "create-token", "door-9", "--scope", "hq", "--device", "door-9",
                 "--method", "Enroll", "--method", "Verify"]) == 0  # fmt: skip
    token = capsys.readouterr().out.strip().splitlines()[-1]
    door = Client(site.running.port, token, "door-9", key)
    door.enroll("s-a", unit(1))
    assert door.verify("s-a", unit(1))
    assert code(lambda: door.identify(unit(1))) == grpc.StatusCode.PERMISSION_DENIED
    assert site.client("door-0").identify(unit(1)) == []  # the default scope sees nothing
    assert main([*base, "revoke-token", "door-9"]) == 0
    assert code(lambda: door.verify("s-a", unit(1))) == grpc.StatusCode.UNAUTHENTICATED
    # Bad input: a message and exit code 2, never a traceback.
    assert main([*base, "register-device", "door-8", "not-hex"]) == 2
    assert main([*base, "create-token", "x", "--method", "Delete"]) == 2
    assert main([*base, "register-device", "door-8", vk, "--scope", "a b"]) == 2
    err = capsys.readouterr().err
    assert "must be hex" in err and "unknown methods" in err and "scope must be" in err
    assert "Traceback" not in err
