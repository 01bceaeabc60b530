"""Issue 20, items 4-5: a store that refuses to pretend, an audit trail that is evidence."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from authz_kit import Site, code, emb, unit
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.audit_verify import verify_rows
from auth_service.refusals import RefusalAudit
from auth_service.service_key import default_path, load
from auth_service.store import StoreMissing
from auth_service.store_sqlite import SqliteStore
from kfaar_pb.v1 import auth_pb2

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(site: Site) -> tuple[int, str]:
    """Return the service's health status and its reason (trailing metadata)."""
    with grpc.insecure_channel(f"127.0.0.1:{site.running.port}") as channel:
        reply, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return reply.status, dict(call.trailing_metadata()).get("kfaar-health-reason", "")


# -- 4. a store that refuses to pretend ------------------------------------------------
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_kfaar_serve_refuses_a_missing_or_empty_database(tmp_path: Path, state, capsys) -> None:
    from edge_agent.cli import main

    db = tmp_path / "kfaar.db"
    if state == "empty":
        db.write_bytes(b"")  # before: silently recreated, SERVING, every call failing
    argv = ["serve", "--insecure", "--port", "0", "--db", str(db)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "kfaar db init" in err and "Traceback" not in err
    assert not db.exists() or db.stat().st_size == 0  # nothing was created
    with pytest.raises(StoreMissing):
        SqliteStore(db, create=False)


def test_kfaar_db_init_makes_the_database_and_its_key(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    db = tmp_path / "kfaar.db"
    assert main(["db", "init", "--db", str(db)]) == 0
    assert db.stat().st_size > 0 and default_path(db).stat().st_mode & 0o777 == 0o600
    load(default_path(db))
    SqliteStore(db, create=False).close()  # now it opens without --create
    assert main(["db", "init", "--db", str(db)]) == 2  # never over an existing one
    assert "exists already" in capsys.readouterr().err


def _corrupt_index_page(db: Path, index: str) -> None:
    """Overwrite the root page of ``index`` with garbage (the database is closed)."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
    con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)


def test_a_corrupted_store_starts_not_serving_with_the_reason(tmp_path: Path, capsys) -> None:
    site = Site(tmp_path / "kfaar.db")
    site.client("door").enroll("alice", unit(1))
    site.running.stop(0)
    site.running.store.close()
    _corrupt_index_page(tmp_path / "kfaar.db", "templates_subject")
    site.running = __import__("auth_service.server", fromlist=["start"]).start(site.cfg)
    try:
        status, reason = health(site)
        assert status == NOT_SERVING and "integrity" in reason  # before: SERVING
        door = site.reconnect(site.client("door-2"))  # admin calls are refused too
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
    else:
        assert code(lambda: door.verify("alice", unit(1))) == grpc.StatusCode.UNAVAILABLE
    finally:
        site.stop()
    from edge_agent.cli import main

    site2 = Site(tmp_path / "other.db")  # kfaar health prints the reason too
    try:
        site2.running.store.mark_faulty("page read failed: database disk image is malformed")
        assert main(["health", "--server", f"127.0.0.1:{site2.running.port}"]) == 1
        assert "NOT_SERVING (page read failed" in capsys.readouterr().out
    finally:
        site2.stop()


def test_a_failed_page_read_marks_the_service_unhealthy(tmp_path: Path) -> None:
    site = Site(tmp_path / "kfaar.db")
    try:
        door = site.client("door")
        for i in range(40):
            door.enroll(f"s-{i}", unit(i))
        store = site.running.store
        with store.lock:  # damage the table's pages under the running service
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page = store.db.execute("PRAGMA page_size").fetchone()[0]
            n = store.db.execute("PRAGMA page_count").fetchone()[0]
            with open(tmp_path / "kfaar.db", "r+b") as f:
                for p in range(2, n):
                    f.seek(p * page)
                    f.write(b"\xa5" * page)
            store.db.execute("PRAGMA cache_size = 0")
            store.db.execute("PRAGMA cache_size = -2000")
        got = {code(lambda i=i: door.verify(f"s-{i}", unit(i))) for i in range(3)}
        assert got == {grpc.StatusCode.UNAVAILABLE}  # before: UNKNOWN, forever
        status, reason = health(site)
        assert status == NOT_SERVING and "malformed" in reason
    finally:
        site.stop()


# -- 5. an audit trail that is evidence ----------------------------------------------------
def _chain(tmp_path: Path, n: int) -> tuple[Path, SqliteStore]:
    from auth_service import service_key

    db = tmp_path / "audit.db"
    store = SqliteStore(db)
    store.service_key = service_key.create(default_path(db))
    with store.lock:  # one transaction: 10,000 rows in about a second
        store._tx(
            lambda conn: [
                store._append_audit(conn, f"d{i % 7}", "Verify", f"s{i % 13}", "reject", 1)
                for i in range(n)
            ]
        )
    store.audit_checkpoint()
    return db, store


def _verify(store: SqliteStore):
    trusted = {store.service_key.verify_key}
    return verify_rows(store.audit_rows(), store.audit_checkpoints(), trusted)


def _tamper(db: Path, kind: str, rid: int) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    if kind == "edit":
        con.execute("UPDATE audit SET outcome = 'accept' WHERE id = ?", (rid,))
    elif kind == "delete":
        con.execute("DELETE FROM audit WHERE id = ?", (rid,))
    else:  # swap the row with the next one: every column but the id
        cols = (
            "at, device_id, method, subject_id, outcome, scope, subject, count, writer, "
            "seq, prev_hash, row_hash"
        )
        a = con.execute(f"SELECT {cols} FROM audit WHERE id = ?", (rid,)).fetchone()
        b = con.execute(f"SELECT {cols} FROM audit WHERE id = ?", (rid + 1,)).fetchone()
        sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
        con.execute("UPDATE audit SET seq = -seq WHERE id IN (?, ?)", (rid, rid + 1))
        con.execute(f"UPDATE audit SET {sets} WHERE id = ?", (*b, rid))
        con.execute(f"UPDATE audit SET {sets} WHERE id = ?", (*a, rid + 1))
    con.close()


def test_every_single_row_edit_deletion_and_reordering_is_found(tmp_path: Path) -> None:
    db, store = _chain(tmp_path, 10_000)
    started = time.perf_counter()
    report = _verify(store)
    assert report.ok and report.rows == 10_000 and report.checkpoints >= 39
    assert time.perf_counter() - started < 30
    store.close()
    # Every position of a small chain, and a sample of the 10,000 (first, last, spread).
    small_db, small = _chain(tmp_path / "small", 40)
    small.close()
    cases = [(small_db, k, r) for k in ("edit", "delete", "swap") for r in range(1, 41)]
    cases += [
        (db, k, r)
        for k in ("edit", "delete", "swap")
        for r in (1, 2, 257, 4999, 5000, 9998, 9999, 10_000)
    ]
    for path, kind, rid in cases:
        if kind == "swap" and rid in (40, 10_000):
            continue  # the last row has no next row to swap with
        copy = path.with_suffix(f".{kind}{rid}")
        copy.write_bytes(path.read_bytes())
        _tamper(copy, kind, rid)
        store = SqliteStore(copy, create=False)
        store.service_key = load(default_path(path))
        found = _verify(store).findings
        store.close()
        copy.unlink()
        assert found, (kind, rid)
        first = found[0]
        expected = {"edit": "changed", "delete": "deleted", "swap": "reordered"}[kind]
        assert first.kind == expected, (kind, rid, first)
        if kind != "delete" or rid not in (40, 10_000):
            assert first.row_id in (rid, rid + 1), (kind, rid, first)  # names the row


def test_rewritten_hashes_and_forged_checkpoints_are_found(tmp_path: Path) -> None:
    from auth_service.audit import row_hash

    db, store = _chain(tmp_path, 300)
    rows = store.audit_rows()
    store.close()
    con = sqlite3.connect(db, isolation_level=None)  # rewrite row 10 and re-hash the rest
    prev = bytes(rows[8][11])
    for row in rows[9:]:
        fields = list(row[1:10])
        if row[0] == 10:
            fields[5] = "accept"
        h = row_hash(prev, tuple(fields))
        con.execute(
            "UPDATE audit SET outcome = ?, prev_hash = ?, row_hash = ? WHERE id = ?",
            (fields[5], prev, h, row[0]),
        )
        prev = h
    con.close()
    store = SqliteStore(db, create=False)
    store.service_key = load(default_path(db))
    found = _verify(store).findings
    assert found and "signed checkpoint" in found[0].message
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE audit_checkpoints SET signature = zeroblob(64)")
    con.close()
    assert any(f.kind == "forged-checkpoint" for f in _verify(store).findings)
    store.close()


def test_kfaar_audit_verify_names_the_first_bad_row(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    site = Site(tmp_path / "kfaar.db")
    door = site.client("door", "hq")
    door.enroll("alice", unit(1))
    assert door.verify("alice", unit(1))
    site.stop()
    site.running.store.close()
    assert main(["audit", "verify", "--db", str(tmp_path / "kfaar.db")]) == 0
    assert "intact" in capsys.readouterr().out
    con = sqlite3.connect(tmp_path / "kfaar.db", isolation_level=None)
    rid = con.execute("SELECT id FROM audit WHERE method = 'Enroll'").fetchone()[0]
    con.execute("UPDATE audit SET device_id = 'someone-else' WHERE id = ?", (rid,))
    con.close()
    assert main(["audit", "verify", "--db", str(tmp_path / "kfaar.db")]) == 1
    assert f"BROKEN: row id {rid} " in capsys.readouterr().out
    assert main(["audit", "verify", "--db", str(tmp_path / "none.db")]) == 2
    assert "no database" in capsys.readouterr().err


def test_a_swapped_template_is_refused(tmp_path: Path) -> None:
    site = Site(tmp_path / "kfaar.db")
    door = site.client("door")
    door.enroll("alice", unit(1), unit(5))
    door.enroll("mallory", unit(2))
    site.running.stop(0)
    site.running.store.close()
    con = sqlite3.connect(tmp_path / "kfaar.db", isolation_level=None)  # on disk, offline
    mallory = con.execute("SELECT vector FROM templates WHERE subject_id = 'mallory'").fetchone()
    first = con.execute("SELECT MIN(id) FROM templates WHERE subject_id = 'alice'").fetchone()
    con.execute("UPDATE templates SET vector = ? WHERE id = ?", (*mallory, *first))
    con.execute(
        "INSERT INTO templates (subject_id, model, space, vector, created) "
        "SELECT 'alice', model, space, vector, created FROM templates "
        "WHERE subject_id = 'mallory'"
    )
    con.close()
    site.running = __import__("auth_service.server", fromlist=["start"]).start(site.cfg)
    try:
        mallory_door = site.reconnect(door)
        assert not mallory_door.verify("alice", unit(2))  # before: accepted
        assert mallory_door.identify(unit(2)) == ["mallory"]
        assert mallory_door.verify("alice", unit(5))  # her untouched template still works
    finally:
        site.stop()


def test_refusal_floods_add_at_most_a_row_a_second_per_device(tmp_path: Path) -> None:
    site = Site(tmp_path / "kfaar.db")
    try:
        door = site.client("door")
        door.enroll("alice", unit(1))
        camera = site.client("camera", methods=["Verify"])
        before = len(site.running.store.audit_rows())
        started = time.monotonic()
        flood = auth_pb2.EnrollRequest(subject_id="x", templates=[emb(unit(3))])
        calls = 0
        while time.monotonic() - started < 2.0:  # PERMISSION_DENIED at the interceptor
            code(lambda: camera.call("Enroll", flood))
            code(lambda: camera.verify("nobody", unit(4)))  # budget refusals after a few
            calls += 2
        bad = site.reconnect(camera)
        bad.meta = (("authorization", "Bearer wrong"),)  # UNAUTHENTICATED, by peer
        for _ in range(50):
            code(lambda: bad.verify("alice", unit(1)))
        elapsed = time.monotonic() - started
        rows = site.running.store.audit_rows()[before:]
        refused = [r for r in rows if r[6].startswith("refused")]
        assert calls > 100
        assert len(refused) <= 2 * (elapsed + 1) + 2  # before: one row per refused call
        assert any("PERMISSION_DENIED" in r[6] for r in refused)
        assert any("UNAUTHENTICATED" in r[6] for r in refused)
        site.running.refusals.flush()
        counted = sum(
            r[7] for r in site.running.store.audit_rows()[before:] if r[6].startswith("refused")
        )
        assert counted >= calls  # every refusal is counted, in fewer rows
    finally:
        site.stop()


def test_refusal_rows_are_aggregated_per_device_and_window() -> None:
    written = []

    class Store:
        def audit(self, *args, count=1):
            written.append((*args, count))

    now = [0.0]
    audit = RefusalAudit(Store(), window_s=1.0, clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.05  # 20 a second for 5 s
        audit.record("cam", "cam", "Verify", None, "refused: X")
    audit.flush()
    assert len(written) <= 6 and sum(w[-1] for w in written) == 100


def test_two_replicas_on_postgresql_keep_intact_chains(postgres_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from auth_service import service_key
    from auth_service.store_postgres import PostgresStore

    key = service_key.ServiceKey(b"k" * 32)
    replicas = [PostgresStore(postgres_url) for _ in range(2)]
    for i, r in enumerate(replicas):
        r.service_key, r.audit_writer = key, f"replica-{i}"
    try:
        with ThreadPoolExecutor(8) as pool:  # 8 threads over 2 replicas, interleaved
            list(
                pool.map(
                    lambda i: replicas[i % 2].audit(f"d{i}", "Verify", "hq\x1fa", "ok"), range(400)
                )
            )
        for r in replicas:
            r.audit_checkpoint()
        report = verify_rows(
            replicas[0].audit_rows(), replicas[0].audit_checkpoints(), {key.verify_key}
        )
        assert report.ok and report.rows == 400 and report.checkpoints == 2, report.findings
        mid = report.rows // 2
        with replicas[0]._connection() as db:
            db.execute(
                "DELETE FROM audit WHERE id = (SELECT id FROM audit ORDER BY id OFFSET ? LIMIT 1)",
                (mid,),
            )
        found = verify_rows(replicas[0].audit_rows(), replicas[0].audit_checkpoints(), set())
        assert found.findings and found.findings[0].kind == "deleted"
    finally:
        for r in replicas:
            r.close()


def test_an_older_database_migrates_and_its_templates_are_tagged_by_db_migrate(
    tmp_path: Path, capsys
) -> None:
    import numpy as np

    from auth_service.store import MIGRATIONS
    from edge_agent.cli import main

    db = tmp_path / "old.db"
    con = sqlite3.connect(db, isolation_level=None)
    for i, script in enumerate(MIGRATIONS[:4], start=1):
        con.executescript(f"BEGIN; {script} PRAGMA user_version = {i}; COMMIT;")
    vec = unit(1).astype(np.float32).tobytes()
    con.execute(
        "INSERT INTO templates (subject_id, model, space, vector, created) "
        "VALUES ('alice', 'hpvfg/1.0.0', 1, ?, 0)",
        (vec,),
    )
    con.execute(
        "INSERT INTO audit (at, device_id, method, subject_id, outcome) "
        "VALUES (0, 'door', 'Enroll', 'alice', '1 stored')"
    )
    con.close()
    assert main(["db", "migrate", "--db", str(db)]) == 0
    assert "tagged 1 templates" in capsys.readouterr().out
    assert main(["audit", "verify", "--db", str(db)]) == 0
    assert "1 from before the chain" in capsys.readouterr().out
    site = Site(db)  # the service accepts the tagged template
    try:
        door = site.reconnect(site.client("door-2"))
        assert door.verify("alice", unit(1))
        rekey = auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(unit(2))])
        assert code(lambda: door.call("Rekey", rekey)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        site.stop()


def test_a_lost_service_key_is_not_silently_replaced(tmp_path: Path) -> None:
    from auth_service.server import start
    from auth_service.service_key import ServiceKeyError

    site = Site(tmp_path / "kfaar.db")
    site.client("door").enroll("alice", unit(1))
    site.stop()
    site.running.store.close()
    default_path(tmp_path / "kfaar.db").unlink()
    with pytest.raises(ServiceKeyError, match="restore that key file"):
        start(site.cfg)  # even with create_db: a fresh key would refuse every template


# -- PostgreSQL replicas must not run unsigned by accident --------------------------------
def test_postgresql_without_a_service_key_is_refused_unless_allowed(
    tmp_path: Path, postgres_url: str, capsys, caplog, monkeypatch
) -> None:
    from auth_service.server import start
    from auth_service.service_key import ServiceKeyError
    from edge_agent.cli import main

    monkeypatch.delenv("KFAAR_SERVICE_KEY_FILE", raising=False)
    monkeypatch.delenv("KFAAR_ALLOW_UNSIGNED_STORE", raising=False)
    argv = ["serve", "--insecure", "--port", "0", "--db-url", postgres_url]
    assert main(argv) == 2  # before: served, untagged and unsigned, with a warning
    err = capsys.readouterr().err
    assert "$KFAAR_SERVICE_KEY_FILE" in err and "kfaar db init" in err
    assert "--allow-unsigned-store" in err and "Traceback" not in err
    site = Site(tmp_path / "unused.db", db_url=postgres_url)  # with a key; now without one
    site.stop()
    site.running.store.close()
    site.cfg.service_key_file = None
    with pytest.raises(ServiceKeyError, match="KFAAR_SERVICE_KEY_FILE"):
        start(site.cfg)
    site.cfg.allow_unsigned_store = True
    with caplog.at_level("ERROR", logger="auth_service.server"):
        site.running = start(site.cfg)
    try:
        assert any("UNSIGNED STORE" in r.getMessage() for r in caplog.records)
        assert main(["health", "--server", f"127.0.0.1:{site.running.port}"]) == 0
        assert "SERVING [warning: unsigned store" in capsys.readouterr().out
    finally:
        site.stop()
        site.running.store.close()


def test_kfaar_db_init_makes_the_key_of_a_postgresql_store(
    tmp_path: Path, postgres_url: str, capsys, monkeypatch
) -> None:
    from edge_agent.cli import main

    monkeypatch.delenv("KFAAR_SERVICE_KEY_FILE", raising=False)
    key = tmp_path / "service-key"
    assert main(["db", "init", "--db-url", postgres_url]) == 2  # where would the key go?
    assert "--service-key-file" in capsys.readouterr().err
    assert main(["db", "init", "--db-url", postgres_url, "--service-key-file", str(key)]) == 0
    assert "key " in capsys.readouterr().out and key.stat().st_mode & 0o777 == 0o600
    load(key)
    assert main(["db", "init", "--db-url", postgres_url, "--service-key-file", str(key)]) == 2
    assert "exists already" in capsys.readouterr().err  # never over an existing key
    site = Site(tmp_path / "unused.db", db_url=postgres_url)
    site.stop()
    site.running.store.close()
    site.cfg.service_key_file = key  # the key db init made serves the store
    site.running = __import__("auth_service.server", fromlist=["start"]).start(site.cfg)
    try:
        door = site.client("door")
        door.enroll("alice", unit(1))
        assert door.verify("alice", unit(1))
        assert site.running.store.has_tagged_templates()
    finally:
        site.stop()
        site.running.store.close()
    other = tmp_path / "other-key"  # a second key for a store tagged with the first: refused
    assert main(["db", "init", "--db-url", postgres_url, "--service-key-file", str(other)]) == 2
    assert "restore that key file" in capsys.readouterr().err and not other.exists()


def test_an_untagged_row_is_no_identify_candidate_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    import psycopg

    site = Site(tmp_path / "unused.db", db_url=postgres_url)
    door = site.client("door")
    door.enroll("alice", unit(1))
    door.enroll("mallory", unit(2))
    site.stop()
    site.running.store.close()
    with psycopg.connect(postgres_url, autocommit=True) as db:  # written without the key
        db.execute(
            "INSERT INTO templates (subject_id, model, space, vector, created) "
            "SELECT 'alice', model, space, vector, created FROM templates "
            "WHERE subject_id = 'mallory'"
        )
    site.running = __import__("auth_service.server", fromlist=["start"]).start(site.cfg)
    try:
        mallory_door = site.reconnect(door)
        assert mallory_door.identify(unit(2)) == ["mallory"]  # before: alice too
        assert not mallory_door.verify("alice", unit(2))
        assert mallory_door.verify("alice", unit(1))
    finally:
        site.stop()
        site.running.store.close()


# -- template rollback: a row put back after a Rekey or Revoke ------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def rollback_site(tmp_path: Path, request):
    """A site, and a function running SQL on its database behind the service's back."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    site = Site(tmp_path / "kfaar.db", db_url=url)

    def sql(statement: str, params: tuple = ()) -> list[tuple]:
        if url:
            import psycopg

            with psycopg.connect(url, autocommit=True) as db:
                cur = db.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        con = sqlite3.connect(tmp_path / "kfaar.db", isolation_level=None)
        try:
            return con.execute(statement, params).fetchall()
        finally:
            con.close()

    yield site, sql
    site.stop()
    site.running.store.close()


_ROW = "subject_id, model, space, vector, created, tag, generation"


def _restart(site: Site) -> None:
    site.running.stop(0)
    site.running.store.close()
    site.running = __import__("auth_service.server", fromlist=["start"]).start(site.cfg)


def test_a_template_put_back_after_a_rekey_or_revoke_is_refused(rollback_site) -> None:
    site, sql = rollback_site
    door = site.client("door")
    door.enroll("alice", unit(1))
    door.enroll("bob", unit(2))
    saved = sql(f"SELECT {_ROW} FROM templates WHERE subject_id IN ('alice', 'bob')")
    old_gens = sql("SELECT subject_id, generation, tag FROM subject_generations")
    door.call("Rekey", auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(unit(3))]))
    site.as_admin(door).call("Revoke", auth_pb2.RevokeRequest(subject_id="bob"))
    site.running.stop(0)
    marks = ", ".join("?" * 7)
    for row in saved:  # the thief puts the old rows back, tags and all
        sql(f"INSERT INTO templates ({_ROW}) VALUES ({marks})", row)
    _restart(site)
    door = site.reconnect(door)
    assert not door.verify("alice", unit(1))  # before: accepted (the old tag passed)
    assert door.verify("alice", unit(3))
    assert code(lambda: door.verify("bob", unit(2))) == grpc.StatusCode.NOT_FOUND
    assert door.identify(unit(1)) == [] and door.identify(unit(2)) == []
    # Putting back the old generation rows too passes the load (docs/SECURITY.md): the
    # audit chain, not the tag, records the Rekey and the Revoke.
    assert len(old_gens) == 2


def test_schema_5_tags_are_re_tagged_by_db_migrate_and_serve_says_so(
    tmp_path: Path, capsys
) -> None:
    import numpy as np

    from auth_service import service_key
    from auth_service.store import MIGRATIONS
    from edge_agent.cli import main

    db = tmp_path / "old.db"
    key = service_key.create(default_path(db))
    con = sqlite3.connect(db, isolation_level=None)
    for i, script in enumerate(MIGRATIONS[:5], start=1):
        con.executescript(f"BEGIN; {script} PRAGMA user_version = {i}; COMMIT;")
    for subject, seed in (("alice", 1), ("mallory", 2)):
        vec = unit(seed).astype(np.float32).tobytes()
        tag = key.tag(subject, "hpvfg/1.0.0", 1, vec) if subject == "alice" else b"x" * 32
        con.execute(
            "INSERT INTO templates (subject_id, model, space, vector, created, tag) "
            "VALUES (?, 'hpvfg/1.0.0', 1, ?, 0, ?)",
            (subject, vec, tag),
        )
    con.close()
    argv = ["serve", "--insecure", "--port", "0", "--db", str(db)]
    assert main(argv) == 2  # never serves quietly refusing every old template
    assert "kfaar db migrate" in capsys.readouterr().err
    assert main(["db", "migrate", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "re-tagged 1 templates" in out and "left 1 templates" in out
    site = Site(db)
    try:
        door = site.reconnect(site.client("door"))
        assert door.verify("alice", unit(1))
        assert door.identify(unit(2)) == []  # a forged schema-5 tag stays refused
    finally:
        site.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_admin_enrolls_on_either_store_and_keeps_the_subject_from_apps(
    tmp_path: Path, request, backend: str
) -> None:
    from authz_kit import ADMIN

    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    site = Site(tmp_path / "kfaar.db", db_url=url)
    try:
        admin_cam = site.client("cam-admin", token=ADMIN)
        assert admin_cam.enroll("vip", unit(7)).templates_stored == 1  # PostgreSQL: was UNKNOWN
        assert admin_cam.verify("vip", unit(7))
        app_cam = site.client("cam-app")
        assert code(lambda: app_cam.enroll("vip", unit(8))) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        site.stop()
