"""The template stores, SQLite and PostgreSQL: migrations, tags, transactions, idempotency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auth_service.store import MIGRATIONS, ReplyConflict, SqlStore, StoreError
from auth_service.store_sqlite import SqliteStore

VIRTUAL, RECOVERED = 1, 2


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(tmp_path: Path, request) -> SqlStore:
    if request.param == "sqlite":
        yield SqliteStore(tmp_path / "kfaar.db")
        return
    from auth_service.store_postgres import PostgresStore

    pg = PostgresStore(request.getfixturevalue("postgres_url"))
    yield pg
    pg.close()


def test_sqlite_schema_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kfaar.db")
    assert store.schema_version == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert SqliteStore(tmp_path / "kfaar.db").schema_version == len(MIGRATIONS)  # idempotent


def test_postgres_schema_is_migrated_once(postgres_url: str) -> None:
    from auth_service import store_postgres

    first = store_postgres.PostgresStore(postgres_url)
    first.put_device("door-1", b"k" * 32)
    first.close()
    again = store_postgres.PostgresStore(postgres_url)  # a restart: nothing re-created, kept
    assert again.schema_version == len(store_postgres.MIGRATIONS)
    assert again.device_key("door-1") == b"k" * 32
    again.close()


def test_postgres_connection_errors_are_clear() -> None:
    from auth_service.store_postgres import PostgresStore

    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        PostgresStore("postgresql://nobody:secret-pw@127.0.0.1:1/none?connect_timeout=2")


def test_templates_are_tagged_and_galleries_do_not_mix(store: SqlStore) -> None:
    a, b = _unit(2, 0), _unit(1, 1)
    assert store.enroll("s-a", "hpvfg/1.0.0", VIRTUAL, a) == 2
    store.enroll("s-b", "hpvfg/1.0.0", RECOVERED, b)
    store.enroll("s-c", "hpvfg/0.9.0", VIRTUAL, b)
    g = store.gallery("hpvfg/1.0.0", VIRTUAL)
    assert g.subjects == ["s-a", "s-a"]
    np.testing.assert_array_equal(g.vectors, a)
    tags, vecs = store.subject_templates("s-b")
    assert tags == [("hpvfg/1.0.0", RECOVERED)] and vecs.shape == (1, 128)
    with pytest.raises(StoreError, match="expected"):
        store.enroll("s-d", "hpvfg/1.0.0", VIRTUAL, np.zeros((1, 64)))


def test_rekey_replaces_atomically_and_revoke_removes(store: SqlStore) -> None:
    store.enroll("s-a", "hpvfg/1.0.0", VIRTUAL, _unit(3, 0))
    new = _unit(1, 9)
    assert store.replace("s-a", "hpvfg/1.0.0", VIRTUAL, new) == 1
    np.testing.assert_array_equal(store.subject_templates("s-a")[1], new)
    with pytest.raises(StoreError, match="unknown subject"):
        store.replace("nobody", "hpvfg/1.0.0", VIRTUAL, new)
    assert store.revoke("s-a") == 1 and store.revoke("s-a") == 0


def test_a_failed_transaction_leaves_nothing(store: SqlStore) -> None:
    store.enroll("s-a", "hpvfg/1.0.0", VIRTUAL, _unit(1, 0))

    def boom(db) -> None:
        db.execute("DELETE FROM templates")
        raise RuntimeError("crash mid-transaction")

    with pytest.raises(RuntimeError):
        store._tx(boom)
    assert store.subject_templates("s-a")[1].shape == (1, 128)


def test_idempotent_operations_run_once(store: SqlStore) -> None:
    calls = []

    def enroll() -> bytes:
        calls.append(1)
        store.enroll("s-a", "hpvfg/1.0.0", VIRTUAL, _unit(1, 0))
        return b"reply-1"

    claim = {"device": "cam", "key": "k-1", "method": "Enroll", "request_hash": b"h" * 32}
    assert store.once(**claim, run=enroll, ttl_s=60) == b"reply-1"
    assert store.once(**claim, run=enroll, ttl_s=60) == b"reply-1"
    assert len(calls) == 1 and store.subject_templates("s-a")[1].shape == (1, 128)
    assert store.reply_method("cam", "k-1", ttl_s=60) == "Enroll"
    assert store.reply_method("other-cam", "k-1", ttl_s=60) is None  # keys are per device
    with pytest.raises(ReplyConflict, match="Enroll"):
        store.once(**{**claim, "method": "Rekey"}, run=enroll, ttl_s=60)
    with pytest.raises(ReplyConflict):
        store.once(**{**claim, "request_hash": b"x" * 32}, run=enroll, ttl_s=60)


def test_a_write_and_its_reply_commit_together(store: SqlStore) -> None:
    def crash_after_the_write() -> bytes:
        store.enroll("s-a", "hpvfg/1.0.0", VIRTUAL, _unit(1, 0))
        raise RuntimeError("killed before the reply was recorded")

    claim = {"device": "cam", "key": "k-1", "method": "Enroll", "request_hash": b"h" * 32}
    with pytest.raises(RuntimeError):
        store.once(**claim, run=crash_after_the_write, ttl_s=60)
    assert store.subject_templates("s-a")[1].shape == (0, 128)  # the write rolled back too
    assert store.reply_method("cam", "k-1", ttl_s=60) is None


def test_devices_and_audit(store: SqlStore) -> None:
    store.put_device("door-1", b"k" * 32)
    assert store.device_key("door-1") == b"k" * 32 and store.device_key("door-2") is None
    assert store.remove_device("door-1") and not store.remove_device("door-1")
    store.audit("door-1", "Verify", "s-a", "reject")
    (row,) = store.audit_log()
    assert row[1:] == ("door-1", "Verify", "s-a", "reject")


def test_two_replicas_racing_on_one_key_apply_the_write_once(postgres_url: str) -> None:
    import threading

    from auth_service.store_postgres import PostgresStore

    replicas = [PostgresStore(postgres_url), PostgresStore(postgres_url)]
    both_inside = threading.Barrier(2, timeout=10)
    claim = {"device": "cam", "key": "k-1", "method": "Enroll", "request_hash": b"h" * 32}
    replies = []

    def serve(store: SqlStore, n: int) -> None:
        def enroll() -> bytes:
            # Both replicas have found the key free and start the write at once (the change
            # log's counter then makes one wait for the other's commit).
            if not both_inside.broken:
                both_inside.wait()
            store.enroll("s-a", "hpvfg/1.0.0", VIRTUAL, _unit(1, 0))
            return b"reply-%d" % n

        replies.append(store.once(**claim, run=enroll, ttl_s=60))

    threads = [threading.Thread(target=serve, args=(s, i)) for i, s in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(replies) == 2 and replies[0] == replies[1]  # the loser gets the winner's reply
    assert replicas[0].subject_templates("s-a")[1].shape == (1, 128)
    for s in replicas:
        s.close()


# The console's subject pages read each shown subject's last accepted Verify this way
# (auth_service/console/data.py, Reader.subjects); without schema 9's index it scanned the
# whole audit log (14.5 ms -> 1.2 ms a page at 10,000 subjects and 100,000 rows, SQLite).
_LAST_MATCHED = (
    "SELECT subject_id, MAX(at) FROM audit WHERE method = 'Verify' AND "
    "outcome = 'accept' AND subject_id IN ({marks}) GROUP BY subject_id"
)


def test_the_audit_log_is_searched_by_subject_not_scanned(tmp_path: Path, request) -> None:
    store = SqliteStore(tmp_path / "kfaar.db")
    sql = "EXPLAIN QUERY PLAN " + _LAST_MATCHED.format(marks="?, ?")
    plan = " ".join(row[-1] for row in store.db.execute(sql, ("a", "b")))
    store.close()
    assert "USING INDEX audit_subject" in plan and "SCAN audit" not in plan, plan
    import psycopg

    from auth_service.store_postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    PostgresStore(url).close()  # migrated
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether an index exists
        rows = conn.execute("EXPLAIN " + _LAST_MATCHED.format(marks="%s, %s"), ("a", "b"))
        plan = " ".join(r[0] for r in rows)
    assert "audit_subject" in plan, plan
