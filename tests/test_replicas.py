"""Several service replicas over one real PostgreSQL: index sync, shared limits, outages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from authz_kit import ROOMY_RATE, VIRTUAL, Client, Site, code, emb, unit

from auth_service.index_sync import IndexFollower
from auth_service.ratelimit import Budget, GuessBudgets
from auth_service.store_sqlite import SqliteStore
from kfaar_pb.v1 import auth_pb2

VIRTUAL_MODEL = "hpvfg/1.0.0"
# Room for the misses and the call rate these tests use on purpose (load from one device);
# the limits have tests of their own.
ROOMY = GuessBudgets(
    device=Budget(10_000, 1), token=Budget(10_000, 1), subject=Budget(10_000, 1),
    pair=Budget(10_000, 1),
)  # fmt: skip


def _wait_until(check, timeout_s: float) -> float:
    """Poll ``check`` until it is true; return the seconds it took (fail after the timeout)."""
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > timeout_s:
            raise AssertionError(f"not true after {timeout_s} s")
        time.sleep(0.002)
    return time.perf_counter() - t0


@pytest.fixture
def two_replicas(postgres_url: str, tmp_path: Path):
    sites = [
        Site(tmp_path / f"unused-{i}.db", postgres_url, ROOMY, limits=ROOMY_RATE) for i in range(2)
    ]
    yield sites
    for site in sites:
        site.stop()
        site.running.store.close()


def test_a_write_on_one_replica_is_searchable_and_revocable_on_the_other(two_replicas) -> None:
    a, b = two_replicas
    on_a = a.client("door-1")
    on_b = Client(b.running.port, on_a.token, on_a.device, on_a.key)  # same device, replica B
    face = unit(1)
    on_a.enroll("alice", face)
    _wait_until(lambda: on_b.identify(face) == ["alice"], timeout_s=2)
    assert on_b.verify("alice", face)  # Verify reads the store: no index involved

    delays = []
    for _ in range(5):
        a.as_admin(on_a).call("Revoke", auth_pb2.RevokeRequest(subject_id="alice"))
        # A revoked subject stops matching on the other replica within a bounded time.
        delays.append(_wait_until(lambda: on_b.identify(face) == [], timeout_s=1))
        assert code(lambda: on_b.verify("alice", face)) == grpc.StatusCode.NOT_FOUND
        on_a.enroll("alice", face)
        _wait_until(lambda: on_b.identify(face) == ["alice"], timeout_s=2)
    assert max(delays) < 1.0
    lag = b.running.metrics.sync_lag.collect()[0].samples
    count = next(s.value for s in lag if s.name.endswith("_count"))
    assert count >= 10  # B applied A's writes through the change log


def test_a_replica_catches_up_after_its_notifications_are_cut(two_replicas) -> None:
    import psycopg

    a, b = two_replicas
    on_a = a.client("door-1")
    on_b = Client(b.running.port, on_a.token, on_a.device, on_a.key)
    with psycopg.connect(b.cfg.db_url, autocommit=True) as admin:
        # Kill every LISTEN connection: notifications sent meanwhile are lost for good.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
    faces = [unit(10 + i) for i in range(5)]
    for i, face in enumerate(faces):
        on_a.enroll(f"s{i}", face)
    for i, face in enumerate(faces):
        _wait_until(lambda f=face, s=f"s{i}": on_b.identify(f) == [s], timeout_s=5)


def test_a_follower_that_missed_pruned_changes_reloads(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "k.db")
    applied, reloads = [], []
    follower = IndexFollower(store, applied.append, lambda: reloads.append(1), seq=0)
    store.enroll("s1", VIRTUAL_MODEL, VIRTUAL, unit(1)[None])
    store.enroll("s2", VIRTUAL_MODEL, VIRTUAL, unit(2)[None])
    store.enroll("s1", VIRTUAL_MODEL, VIRTUAL, unit(3)[None])
    assert follower.catch_up() == 3 and applied == ["s1", "s2"]  # each subject once
    store.revoke("s2")
    store.enroll("s3", VIRTUAL_MODEL, VIRTUAL, unit(4)[None])
    store.prune_changes(before=time.time() + 1)  # everything, including what it hasn't read
    store.enroll("s4", VIRTUAL_MODEL, VIRTUAL, unit(5)[None])
    follower.catch_up()
    assert reloads == [1] and follower.seq == store.change_seq() == 6
    assert applied == ["s1", "s2"]  # the reload, not the lost changes, brought it up to date
    store.close()


def test_sequence_numbers_follow_commit_order_across_replicas(postgres_url: str) -> None:
    from auth_service.store_postgres import PostgresStore

    stores = [PostgresStore(postgres_url) for _ in range(2)]
    follower = IndexFollower(stores[1], lambda s: None, lambda: None, seq=0)

    def write(store, k: int) -> None:
        for i in range(25):
            store.enroll(f"w{k}-{i}", VIRTUAL_MODEL, VIRTUAL, unit(i)[None])
            follower.catch_up()  # reading mid-flight must never skip a later commit

    threads = [threading.Thread(target=write, args=(s, k)) for k, s in enumerate(stores * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    follower.catch_up()
    seqs = [s for s, _, _ in stores[0].changes_since(0)]
    assert seqs == list(range(1, 101)) and follower.seq == 100
    for store in stores:
        store.close()


def test_replicas_share_guess_budgets_without_losing_a_charge(postgres_url: str) -> None:
    from auth_service.store_postgres import PostgresStore

    stores = [PostgresStore(postgres_url) for _ in range(2)]

    def charge(store) -> None:
        for _ in range(25):

            def add_one(rows):
                level = rows.get("device:cam", (0.0, 0.0))[0]
                return {"device:cam": (level + 1, 0.0)}, None

            store.update_budgets(["device:cam", "pair:x"], add_one)

    threads = [threading.Thread(target=charge, args=(s,)) for s in stores * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].budgets(["device:cam"])["device:cam"][0] == 200
    for store in stores:
        store.close()


def test_a_postgres_restart_under_load_gives_unavailable_and_loses_nothing(tmp_path: Path):
    from pg_kit import PostgresServer

    from auth_service.store_postgres import PoolConfig

    try:
        pg = PostgresServer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    pg.start()
    site = Site(tmp_path / "unused.db", f"{pg.url}/postgres", ROOMY, limits=ROOMY_RATE)
    site.cfg.pool = PoolConfig(acquire_timeout_s=1.0)
    site.restart()  # with the short pool timeout: callers learn of the outage in a second
    try:
        writer = site.client("door-1")
        codes: list[grpc.StatusCode] = []
        stop = threading.Event()

        def enroll_until_stored(n: int) -> None:
            req = auth_pb2.EnrollRequest(
                subject_id=f"p{n}", templates=[emb(unit(n))], idempotency_key=f"enroll-p{n}"
            )
            while not stop.is_set():  # like the edge outbox: same key, fresh signature
                try:
                    writer.call("Enroll", req)
                    return
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    time.sleep(0.1)

        def load(k: int) -> None:
            for n in range(k * 1000, k * 1000 + 60):
                enroll_until_stored(n)

        threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        pg.stop("fast")  # connections drop, in-flight transactions roll back
        time.sleep(2.0)
        pg.start()
        for t in threads:
            t.join(60)
        stop.set()
        assert codes and set(codes) == {grpc.StatusCode.UNAVAILABLE}
        subjects = site.running.store.gallery(VIRTUAL_MODEL, VIRTUAL).subjects
        expected = {f"p{n}" for k in range(3) for n in range(k * 1000, k * 1000 + 60)}
        assert sorted(subjects) == sorted(expected)  # every write stored, none twice
        # Reads recover too, on the pool's fresh connections.
        assert writer.verify("p0", unit(0)) and writer.identify(unit(1001)) == ["p1001"]
    finally:
        site.stop()
        site.running.store.close()
        pg.remove()


def test_pool_settings_are_checked() -> None:
    from auth_service.store_postgres import PoolConfig

    with pytest.raises(ValueError, match="min size"):
        PoolConfig(min_size=4, max_size=2)
    with pytest.raises(ValueError, match="positive"):
        PoolConfig(statement_timeout_ms=0)
    assert np.isfinite(PoolConfig().acquire_timeout_s)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--db-pool", "3"], "--db-pool '3': want MIN,MAX"),
        (["--db-pool", "8,2"], "min size"),
        (["--db-timeout", "0"], "--db-timeout must be a positive"),
        (["--sync-poll", "-1"], "--sync-poll must be a positive"),
    ],
)
def test_bad_pool_and_sync_settings_exit_2(flags, message, tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    url = "postgresql://kfaar@127.0.0.1:1/kfaar"
    assert main(["serve", "--insecure", "--db", str(tmp_path / "k.db"), "--db-url", url,
                 *flags]) == 2  # fmt: skip
    assert message in capsys.readouterr().err


def test_an_unreachable_database_exits_2_without_its_password(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    for url in ("postgresql://kfaar:hunter2@127.0.0.1:1/kfaar",
                "postgresql://kfaar:hunter2@127.0.0.1:1/kfaar?sslmode=bogus"):  # fmt: skip
        assert main(["serve", "--insecure", "--db-url", url, "--db-timeout", "2"]) == 2
        err = capsys.readouterr().err
        assert "cannot connect to PostgreSQL" in err and "hunter2" not in err
