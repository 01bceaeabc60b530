"""The edge keystore: round trip, wrong secret, corruption, permissions, rotation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge_agent.keys import fingerprint
from edge_agent.keystore import Keystore, KeystoreError

PASS = b"correct horse battery staple"


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    return Keystore.create(tmp_path / "keys.json", passphrase=PASS, limits="interactive")


def test_round_trip_keeps_keys_and_never_writes_them_in_the_clear(store: Keystore) -> None:
    alice = store.add("alice")
    lobby = store.add("lobby", kind="site")
    verify = store.signing_key().verify_key
    again = Keystore.open(store.path, passphrase=PASS)
    assert again.key("alice") == alice and again.key("lobby") == lobby
    assert again.signing_key().verify_key == verify
    assert [(e.name, e.kind) for e in again.entries()] == [("alice", "subject"), ("lobby", "site")]
    assert again.entries()[0].fingerprint == fingerprint(alice)
    raw = store.path.read_bytes()
    for secret in (alice, lobby):
        assert secret not in raw and secret.hex().encode() not in raw


def test_the_file_is_private(store: Keystore) -> None:
    store.add("alice")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not list(store.path.parent.glob(".keystore-*"))  # no temporary left behind


def test_a_wrong_passphrase_is_a_clear_error(store: Keystore) -> None:
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore.open(store.path, passphrase=b"guess")
    with pytest.raises(KeystoreError, match="locked with a passphrase"):
        Keystore.open(store.path, device_secret=bytes(32))


def test_corruption_is_detected(store: Keystore) -> None:
    store.add("alice")
    doc = json.loads(store.path.read_text())
    box = bytearray(doc["entries"]["alice"]["box"].encode())
    box[30] = ord("A") if box[30] != ord("A") else ord("B")
    doc["entries"]["alice"]["box"] = box.decode()
    store.path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="corrupted"):
        Keystore.open(store.path, passphrase=PASS).key("alice")
    store.path.write_text("{not json")
    with pytest.raises(KeystoreError, match="not a readable keystore"):
        Keystore.open(store.path, passphrase=PASS)


def test_entries_cannot_be_swapped_between_names(store: Keystore) -> None:
    store.add("alice")
    store.add("mallory")
    doc = json.loads(store.path.read_text())
    doc["entries"]["alice"]["box"] = doc["entries"]["mallory"]["box"]
    store.path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="another name"):
        Keystore.open(store.path, passphrase=PASS).key("alice")


def test_rotate_keeps_the_previous_key_for_rekeying(store: Keystore) -> None:
    old = store.add("alice")
    new = store.rotate("alice")
    assert new != old and store.key("alice") == new and store.previous_key("alice") == old
    assert store.entries()[0].generation == 2


def test_device_secret_and_misuse(tmp_path: Path) -> None:
    secret = bytes(range(32))
    store = Keystore.create(tmp_path / "k.json", device_secret=secret)
    key = store.add("door")
    assert Keystore.open(tmp_path / "k.json", device_secret=secret).key("door") == key
    with pytest.raises(KeystoreError, match="wrong passphrase or device secret"):
        Keystore.open(tmp_path / "k.json", device_secret=bytes(32))
    with pytest.raises(KeystoreError, match="already exists"):
        Keystore.create(tmp_path / "k.json", device_secret=secret)
    with pytest.raises(KeystoreError, match="already has a key"):
        store.add("door")
    with pytest.raises(KeystoreError, match="invalid entry name"):
        store.add("device")
    with pytest.raises(KeystoreError, match="no key named"):
        store.key("nobody")
    with pytest.raises(KeystoreError, match="no keystore"):
        Keystore.open(tmp_path / "missing.json", passphrase=PASS)


def test_keys_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from edge_agent.cli import main

    monkeypatch.setenv("KFAAR_KEYSTORE", str(tmp_path / "ks.json"))
    monkeypatch.setenv("KFAAR_KEYSTORE_PASSPHRASE", PASS.decode())
    assert main(["keys", "init", "--kdf-limits", "interactive"]) == 0
    assert main(["keys", "add", "alice"]) == 0
    assert main(["keys", "rotate", "alice"]) == 0
    assert main(["keys", "export-public"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(bytes.fromhex(out[-1])) == 32  # the Ed25519 verify key
    assert main(["keys", "list"]) == 0
    assert "alice\tsubject" in capsys.readouterr().out
    monkeypatch.setenv("KFAAR_KEYSTORE_PASSPHRASE", "wrong")
    assert main(["keys", "list"]) == 2
    assert "wrong passphrase" in capsys.readouterr().err


def test_no_passphrase_and_no_terminal_is_a_clear_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("KFAAR_")}
    env["KFAAR_KEYSTORE"] = str(tmp_path / "ks.json")
    run = subprocess.run(  # a new session has no controlling terminal for getpass to open
        [sys.executable, "-c", "from edge_agent.cli import main; raise SystemExit(main())",
         "keys", "list"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60,
        start_new_session=True,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "no keystore passphrase: set $KFAAR_KEYSTORE_PASSPHRASE" in run.stderr
    assert "Traceback" not in run.stderr
