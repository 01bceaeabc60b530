"""A database rolled back behind the service's back is refused (docs/SECURITY.md).

A thief with write access to the database, not to the service key's folder, restores an
older copy of the whole database, or puts a revoked subject's old template rows back with
its old generation row: every tag in either is the service's, so before the rollback
anchor the revoked person's door access came back.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import grpc
import pytest
from authz_kit import Client, Site, code, emb, unit
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.server import start
from auth_service.store import StoreError
from kfaar_pb.v1 import auth_pb2

_ROW = "subject_id, model, space, vector, created, tag, generation"


def _sql_on(db: Path, url: str | None):
    """Return a function running SQL on the database behind the service's back."""

    def sql(statement: str, params: tuple = ()) -> list[tuple]:
        if url:
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                cur = conn.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        con = sqlite3.connect(db, isolation_level=None)
        try:
            return con.execute(statement, params).fetchall()
        finally:
            con.close()

    return sql


def _stop(site: Site) -> None:
    site.running.stop(0)
    site.running.store.close()


def _revoke(site: Site, door, subject: str) -> None:
    site.as_admin(door).call("Revoke", auth_pb2.RevokeRequest(subject_id=subject))


def _health(port: int) -> tuple[int, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return reply.status, dict(call.trailing_metadata()).get("kfaar-health-reason", "")


def _backup(db: Path, to: Path) -> None:
    """Take a consistent copy of the live database, as a backup tool does."""
    live, copy = sqlite3.connect(db), sqlite3.connect(to)
    live.backup(copy)
    copy.close()
    live.close()


def _restore_after_revoke(tmp_path: Path) -> tuple[Path, Site, Client]:
    """Enroll alice, back up, revoke her, stop, and put the backup back as the database."""
    db = tmp_path / "kfaar.db"
    site = Site(db)
    door = site.client("door")
    door.enroll("alice", unit(1))
    backup = tmp_path / "backup.db"
    _backup(db, backup)
    _revoke(site, door, "alice")
    assert code(lambda: door.verify("alice", unit(1))) == grpc.StatusCode.NOT_FOUND
    _stop(site)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    shutil.copyfile(backup, db)  # the thief (or the operator) restores the old file
    return db, site, door


def _refused(site: Site, door, subject: str, face) -> str:
    """Restart the service; return why it refused, or fail saying what it served."""
    try:
        site.running = start(site.cfg)
    except StoreError as exc:
        return str(exc)
    try:
        verified = site.reconnect(door).verify(subject, face)
    finally:
        _stop(site)
    pytest.fail(f"the rolled-back database was served: {subject} verifies {verified}")


def _put_back(sql, rows: list[tuple], gens: list[tuple]) -> None:
    """The thief's SQL: old template rows back, and their subjects' old generation rows."""
    marks = ", ".join("?" * 7)
    for row in rows:
        sql(f"INSERT INTO templates ({_ROW}) VALUES ({marks})", row)
    for subject, gen, tag in gens:
        sql(
            "UPDATE subject_generations SET generation = ?, tag = ? WHERE subject_id = ?",
            (gen, tag, subject),
        )


# -- (a) a whole-database backup restored --------------------------------------------------
def test_a_restored_backup_of_the_whole_database_is_refused(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    db, site, door = _restore_after_revoke(tmp_path)

    refused = _refused(site, door, "alice", unit(1))  # before: alice verified again
    assert "older than its rollback anchor" in refused and "generations went back" in refused
    assert "ends before seq" in refused  # the chain was cut back too
    argv = ["serve", "--insecure", "--port", "0", "--db", str(db)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "older than its rollback anchor" in err and "kfaar db accept-restore" in err
    assert "Traceback" not in err
    assert main(["audit", "verify", "--db", str(db)]) == 1  # before: "intact", an older chain
    out = capsys.readouterr().out
    assert "BROKEN: " in out and "which the rollback anchor recorded" in out


# -- (b) the revoked subject's old rows and old generation row put back ------------------
@pytest.fixture(params=["sqlite", "postgres"])
def backend(tmp_path: Path, request) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def test_old_rows_put_back_with_their_old_generation_row_are_refused(
    tmp_path: Path, backend: str | None
) -> None:
    site = Site(tmp_path / "kfaar.db", db_url=backend)
    sql = _sql_on(tmp_path / "kfaar.db", backend)
    door = site.client("door")
    door.enroll("alice", unit(1))
    door.enroll("bob", unit(2))
    saved = sql(f"SELECT {_ROW} FROM templates WHERE subject_id IN ('alice', 'bob')")
    gens = sql("SELECT subject_id, generation, tag FROM subject_generations")
    door.call("Rekey", auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(unit(3))]))
    _revoke(site, door, "bob")
    _stop(site)
    sql("DELETE FROM templates WHERE subject_id = 'alice'")
    _put_back(sql, saved, gens)
    refused = _refused(site, door, "bob", unit(2))  # before: bob verified again
    assert "generations went back: the database holds 0" in refused


def test_a_rollback_under_a_running_service_turns_it_not_serving(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    site = Site(tmp_path / "kfaar.db")
    sql = _sql_on(tmp_path / "kfaar.db", None)
    try:
        door = site.client("door")
        door.enroll("alice", unit(1))
        saved = sql(f"SELECT {_ROW} FROM templates")
        gens = sql("SELECT subject_id, generation, tag FROM subject_generations")
        _revoke(site, door, "alice")
        _put_back(sql, saved, gens)
        site.running.watchdog.check_anchor()  # the periodic check (every --integrity-check)
        status, reason = _health(site.running.port)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "generations went back" in reason and "accept-restore" in reason
        assert code(lambda: door.verify("alice", unit(1))) == grpc.StatusCode.UNAVAILABLE
        assert main(["health", "--server", f"127.0.0.1:{site.running.port}"]) == 1
        assert "NOT_SERVING (the database is older than its rollback anchor" in (
            capsys.readouterr().out
        )
    finally:
        _stop(site)


def test_a_forged_generation_row_cannot_make_up_for_an_old_one(tmp_path: Path) -> None:
    site = Site(tmp_path / "kfaar.db")
    sql = _sql_on(tmp_path / "kfaar.db", None)
    door = site.client("door")
    door.enroll("alice", unit(1))
    saved = sql(f"SELECT {_ROW} FROM templates")
    gens = sql("SELECT subject_id, generation, tag FROM subject_generations")
    _revoke(site, door, "alice")
    _stop(site)
    _put_back(sql, saved, gens)
    sql("INSERT INTO subject_generations VALUES ('zed', 2, ?)", (b"\0" * 32,))  # sum kept
    with pytest.raises(StoreError, match="not tagged by the service: 'zed'"):
        site.running = start(site.cfg)


# -- (c) no false alarms -------------------------------------------------------------------
def test_restarts_rekeys_checkpoints_and_a_lagging_anchor_never_refuse(tmp_path: Path) -> None:
    from auth_service import anchor

    site = Site(tmp_path / "kfaar.db")
    door = site.client("door")
    for i in range(5):
        door.enroll(f"s-{i}", unit(i))
    path = anchor.default_path(tmp_path / "kfaar.db.key")
    assert path.stat().st_mode & 0o777 == 0o600
    early = path.read_bytes()  # what a crash between a commit and the anchor's write leaves
    for round_ in range(3):
        for i in range(5):  # 15 Rekeys, each a checkpoint and an anchor write
            new = emb(unit(100 * round_ + i))
            door.call("Rekey", auth_pb2.RekeyRequest(subject_id=f"s-{i}", templates=[new]))
        store = site.running.store
        with store.lock:  # an audit flood: 600 rows, two 256-row checkpoints among them
            store._tx(
                lambda c, s=store: [
                    s._append_audit(c, "d", "Verify", "x", "no", 1) for _ in range(600)
                ]
            )
        site.restart()
        door = site.reconnect(door)
        assert door.verify("s-4", unit(100 * round_ + 4))
    _revoke(site, door, "s-0")
    state = anchor.read(path)
    assert state.moves == 16 and list(state.checkpoints) == [site.running.store._writer()]
    _stop(site)
    path.write_bytes(early)  # the anchor lags the database: still served
    site.running = start(site.cfg)
    try:
        assert site.reconnect(door).verify("s-1", unit(201))
        assert anchor.read(path).moves == 16  # and it caught up at start
    finally:
        _stop(site)


def test_a_replica_behind_another_replicas_writes_is_not_refused(postgres_url: str, tmp_path):
    from auth_service import anchor
    from auth_service.store_postgres import PostgresStore

    a = Site(tmp_path / "kfaar.db", db_url=postgres_url)  # anchor: pg-service.key.anchor
    door = a.client("door")
    door.enroll("alice", unit(1))
    door.enroll("bob", unit(2))
    saved = _sql_on(tmp_path, postgres_url)(f"SELECT {_ROW} FROM templates")
    gens = _sql_on(tmp_path, postgres_url)(
        "SELECT subject_id, generation, tag FROM subject_generations"
    )
    cfg_b = dataclasses.replace(a.cfg, anchor_file=tmp_path / "replica-b.anchor")

    def replica_b():
        store = PostgresStore(postgres_url)
        store.audit_writer = "replica-b"  # its own chain, its own anchor
        try:
            return start(cfg_b, store)
        except StoreError:
            store.close()
            raise

    b = replica_b()
    b.stop(0)
    b.store.close()
    b_anchor = anchor.read(cfg_b.anchor_file)
    for i in range(6):  # replica A moves the database far past B's anchor
        door.call("Rekey", auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(unit(10 + i))]))
    _revoke(a, door, "bob")
    b = replica_b()  # starts behind A's writes: served, never refused
    assert anchor.read(cfg_b.anchor_file).moves == 7 > b_anchor.moves
    b.stop(0)
    b.store.close()
    _stop(a)
    sql = _sql_on(tmp_path, postgres_url)
    sql("DELETE FROM templates WHERE subject_id = 'alice'")
    _put_back(sql, saved, gens)  # now a rollback: both replicas refuse
    with pytest.raises(StoreError, match="generations went back"):
        replica_b()
    with pytest.raises(StoreError, match="generations went back"):
        start(a.cfg)


# -- (d) the override: an operator restoring a backup on purpose ------------------------
def test_accept_restore_re_anchors_and_is_audited(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    db, site, door = _restore_after_revoke(tmp_path)
    assert main(["db", "accept-restore", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "accepted, and audited: " in out and "generations went back" in out
    rows = _sql_on(db, None)("SELECT device_id, method, outcome FROM audit")
    assert [r[1] for r in rows].count("AcceptRestore") == 1
    assert rows[-1][0].startswith("operator:") and "accepted a rollback" in rows[-1][2]
    site.running = start(site.cfg)  # the operator's choice: alice is back, and it is on record
    try:
        assert site.reconnect(door).verify("alice", unit(1))
    finally:
        _stop(site)
    assert main(["audit", "verify", "--db", str(db)]) == 0
    assert main(["db", "accept-restore", "--db", str(db)]) == 0
    assert "nothing to accept" in capsys.readouterr().out


def test_an_unreadable_anchor_is_refused_and_an_unwritable_one_is_shown(tmp_path: Path) -> None:
    site = Site(tmp_path / "kfaar.db")
    _stop(site)
    anchor_file = tmp_path / "kfaar.db.key.anchor"
    anchor_file.write_text("{not json")
    with pytest.raises(StoreError, match="is not a kfaar rollback anchor"):
        start(site.cfg)
    (tmp_path / "a-file").write_text("")
    cfg = dataclasses.replace(site.cfg, anchor_file=tmp_path / "a-file" / "anchor")
    running = start(cfg)  # served, but `kfaar health` shows it has no anchor
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        warning = dict(call.trailing_metadata()).get("kfaar-health-warning", "")
        assert "no rollback anchor: cannot write" in warning
    finally:
        running.stop(0)
        running.store.close()


def test_db_init_gives_a_new_database_a_fresh_anchor(tmp_path: Path) -> None:
    from auth_service import anchor
    from edge_agent.cli import main

    db = tmp_path / "kfaar.db"
    site = Site(db)
    door = site.client("door")
    door.enroll("alice", unit(1))
    _revoke(site, door, "alice")
    _stop(site)
    for extra in ("", "-wal", "-shm"):  # the operator starts over on the same key
        Path(f"{db}{extra}").unlink(missing_ok=True)
    assert main(["db", "init", "--db", str(db)]) == 0
    path = anchor.default_path(f"{db}.key")
    assert anchor.read(path) == anchor.AnchorState() and path.stat().st_mode & 0o777 == 0o600
    site.running = start(site.cfg)  # not refused by the old database's anchor
    _stop(site)


# -- (e) the anchor file itself removed or put back --------------------------------------
def test_a_removed_anchor_does_not_let_a_restored_backup_in(tmp_path: Path, capsys) -> None:
    from auth_service import anchor
    from edge_agent.cli import main

    db, site, door = _restore_after_revoke(tmp_path)
    anchor.default_path(f"{db}.key").unlink()  # the thief removes the anchor too

    refused = _refused(site, door, "alice", unit(1))  # before: re-created, alice verified
    assert "rollback anchor" in refused and "is missing" in refused
    assert "accept-restore" in refused
    assert main(["db", "accept-restore", "--db", str(db)]) == 0  # the operator's way back
    assert "accepted, and audited: " in capsys.readouterr().out
    rows = _sql_on(db, None)("SELECT method, outcome FROM audit")
    assert [m for m, o in rows if m == "AcceptRestore" and "is missing" in o] == ["AcceptRestore"]
    site.running = start(site.cfg)
    _stop(site)


@pytest.mark.parametrize("how", ["removed", "put back older"])
def test_an_anchor_tampered_with_under_a_running_service_still_catches_a_rollback(
    tmp_path: Path, how: str
) -> None:
    from auth_service import anchor

    site = Site(tmp_path / "kfaar.db")
    sql = _sql_on(tmp_path / "kfaar.db", None)
    path = anchor.default_path(tmp_path / "kfaar.db.key")
    try:
        door = site.client("door")
        door.enroll("alice", unit(1))
        saved = sql(f"SELECT {_ROW} FROM templates")
        gens = sql("SELECT subject_id, generation, tag FROM subject_generations")
        old = path.read_bytes()
        _revoke(site, door, "alice")
        if how == "removed":
            path.unlink()
        else:
            path.write_bytes(old)
        _put_back(sql, saved, gens)
        site.running.watchdog.check_anchor()  # before: nothing behind an absent/old anchor
        status, reason = _health(site.running.port)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING, "the rollback was served"
        assert "generations went back" in reason
        assert code(lambda: door.verify("alice", unit(1))) == grpc.StatusCode.UNAVAILABLE
    finally:
        _stop(site)


# -- (f) a rollback paid for with rows of another timeline on the same key ---------------
def _rows(sql, subject: str) -> tuple[list[tuple], list[tuple]]:
    """Copy a subject's template rows and generation row, as the thief does."""
    rows = sql(f"SELECT {_ROW} FROM templates WHERE subject_id = ?", (subject,))
    gens = sql("SELECT subject_id, generation, tag FROM subject_generations WHERE subject_id = ?",
               (subject,))  # fmt: skip
    return rows, gens


def _trade(site: Site, door, sql, alice: tuple, bob: tuple) -> str:
    """Revoke alice, then put her rows back and pay her move with bob's newer rows."""
    _revoke(site, door, "alice")
    _stop(site)
    sql("DELETE FROM templates WHERE subject_id = 'bob'")
    _put_back(sql, alice[0] + bob[0], alice[1] + bob[1])  # alice -1, bob +1: the sum kept
    return _refused(site, door, "alice", unit(1))


def test_rows_from_before_an_accepted_restore_cannot_pay_for_a_rollback(tmp_path: Path) -> None:
    from edge_agent.cli import main

    db = tmp_path / "kfaar.db"
    site, sql = Site(db), _sql_on(db, None)
    door = site.client("door")
    door.enroll("alice", unit(1))
    door.enroll("bob", unit(2))
    _backup(db, tmp_path / "backup.db")
    door.call("Rekey", auth_pb2.RekeyRequest(subject_id="bob", templates=[emb(unit(3))]))
    bob = _rows(sql, "bob")  # generation 2, on the timeline the restore abandons
    _stop(site)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "backup.db", db)
    assert main(["db", "accept-restore", "--db", str(db)]) == 0  # the operator's restore
    site.running = start(site.cfg)
    door = site.reconnect(door)
    refused = _trade(site, door, sql, _rows(sql, "alice"), bob)  # before: alice verified True
    assert "not tagged by the service: 'bob'" in refused


def test_rows_of_an_old_database_on_the_same_key_cannot_pay_for_a_rollback(tmp_path: Path):
    from edge_agent.cli import main

    db = tmp_path / "kfaar.db"
    site, sql = Site(db), _sql_on(db, None)
    door = site.client("door")
    door.enroll("bob", unit(2))
    for i in range(2):
        door.call("Rekey", auth_pb2.RekeyRequest(subject_id="bob", templates=[emb(unit(3 + i))]))
    bob = _rows(sql, "bob")  # generation 3 in the old database
    _stop(site)
    for extra in ("", "-wal", "-shm"):  # the operator starts over on the same key
        Path(f"{db}{extra}").unlink(missing_ok=True)
    assert main(["db", "init", "--db", str(db)]) == 0
    site = Site(db)
    door = site.client("door")
    door.enroll("alice", unit(1))
    door.enroll("bob", unit(2))
    refused = _trade(site, door, sql, _rows(sql, "alice"), bob)  # before: alice verified True
    assert "not tagged by the service: 'bob'" in refused


def test_the_abandoned_timeline_cannot_be_put_back_whole(tmp_path: Path) -> None:
    from edge_agent.cli import main

    db = tmp_path / "kfaar.db"
    site, sql = Site(db), _sql_on(db, None)
    door = site.client("door")
    door.enroll("alice", unit(1))
    door.enroll("bob", unit(2))
    _backup(db, tmp_path / "backup.db")
    door.call("Rekey", auth_pb2.RekeyRequest(subject_id="bob", templates=[emb(unit(3))]))
    alice, bob = _rows(sql, "alice"), _rows(sql, "bob")  # the abandoned timeline, whole
    _stop(site)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "backup.db", db)
    assert main(["db", "accept-restore", "--db", str(db)]) == 0
    site.running = start(site.cfg)
    door = site.reconnect(door)
    sql("DELETE FROM subject_generations WHERE subject_id = ''")  # its timeline id too
    refused = _trade(site, door, sql, alice, bob)  # every tag valid on the old timeline
    assert "the database is on timeline none, the anchor on " in refused
