"""The PostgreSQL template store: the same SQL as SQLite, for deployments that run a server.

Embeddings are ``bytea`` (float32, little-endian), exactly as in SQLite: pgvector is not
needed because 1:N search runs in the service's own index (auth_service/index.py). Any
number of service replicas share one database through a connection pool each; their
indexes follow each other's writes through the change log (auth_service/changelog.py).
While the database is unreachable, calls fail with ``StoreUnavailable`` (gRPC
UNAVAILABLE) and the pool reconnects by itself once it is back. The schema and its
migrations are in store_postgres_schema.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from auth_service import changelog
from auth_service.changelog import ChangeWaiter
from auth_service.store import (
    EMBED_DIM,
    GENERATION_COLUMNS,
    GENERATION_JOIN,
    Gallery,
    SqlStore,
    StoreError,
    StoreUnavailable,
)
from auth_service.store_postgres_schema import (  # noqa: F401  (callers read MIGRATIONS here)
    MIGRATIONS,
    migrate,
)

log = logging.getLogger(__name__)

GALLERY_BATCH = 20_000  # rows per fetch when a replica loads its gallery
# Budget rows are locked by key in this advisory-lock namespace ("kf"); the migration lock
# (store_postgres_schema.py) uses the one-number form, which never conflicts with the
# two-number form.
BUDGET_LOCK_CLASS = 0x6B66
SUBJECT_LOCK_CLASS = 0x6B73  # one subject's enrolment ("ks"), held until it commits
AUDIT_LOCK_CLASS = 0x6B61  # one writer's audit chain ("ka"), held until its row commits


@dataclass(frozen=True)
class PoolConfig:
    """How a replica talks to PostgreSQL."""

    min_size: int = 2  # connections kept open
    max_size: int = 16  # at most this many at once (one per busy gRPC worker)
    acquire_timeout_s: float = 5.0  # waiting longer for a connection: UNAVAILABLE
    statement_timeout_ms: int = 5_000  # a statement running longer is cancelled
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError("the pool needs 1 <= min size <= max size")
        if self.acquire_timeout_s <= 0 or self.statement_timeout_ms <= 0:
            raise ValueError("pool timeouts must be positive")


class _Connection:
    """Give a psycopg connection sqlite3's calling style: ``?`` placeholders, executemany."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)


class PostgresStore(SqlStore):
    """PostgreSQL through psycopg 3 and a connection pool; a thread's transaction owns one."""

    def __init__(self, url: str, pool: PoolConfig | None = None) -> None:
        self.url, self.pool_config = url, pool or PoolConfig()
        c = self.pool_config
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=c.connect_timeout_s) as conn:
                migrate(_Connection(conn))
        except psycopg.Error as exc:  # unreachable, refused, or a URL libpq cannot parse
            # Callers redact the message: libpq repeats a malformed URL, password and all.
            raise StoreError(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
        self.pool = ConnectionPool(
            url,
            min_size=c.min_size,
            max_size=c.max_size,
            timeout=c.acquire_timeout_s,
            kwargs={
                "autocommit": True,
                "connect_timeout": c.connect_timeout_s,
                "options": f"-c statement_timeout={c.statement_timeout_ms}",
            },
            # No check on every checkout (a round trip each, doubling the cost of a call):
            # the first call that fails has the pool test and replace its idle connections.
            reconnect_timeout=float("inf"),  # keep trying: the database comes back
            name="kfaar",
            open=False,
        )
        self.pool.open()
        self._local = threading.local()  # the connection of this thread's transaction
        self._checking = threading.Lock()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[_Connection]:
        try:
            with self.pool.connection() as conn:
                yield _Connection(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop_dead_connections()
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}".strip()) from exc

    def _drop_dead_connections(self) -> None:
        """Test the idle connections and replace the dead ones (after a server restart)."""
        if self._checking.acquire(blocking=False):  # one thread checks; the others go on
            try:
                self.pool.check()
            except psycopg.Error:
                pass  # still down: the pool keeps reconnecting in the background
            finally:
                self._checking.release()

    @contextlib.contextmanager
    def _read(self) -> Iterator[_Connection]:
        db = getattr(self._local, "db", None)
        if db is not None:  # inside this thread's transaction: see its own writes
            yield db
            return
        with self._connection() as db:
            yield db

    def _tx(self, fn: Callable[[Any], object]) -> object:
        db = getattr(self._local, "db", None)
        if db is not None:  # nested (a write inside ``once``): a savepoint of the outer one
            with db.conn.transaction():
                return fn(db)
        with self._connection() as db:
            self._local.db = db
            try:
                with db.conn.transaction():
                    return fn(db)
            finally:
                self._local.db = None

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return db.execute("SELECT version FROM schema_version").fetchone()[0]

    def gallery(self, model: str, space: int) -> Gallery:
        """Stream one gallery in batches, in binary (a million rows are 0.5 GB of vectors).

        With a service key, rows without a valid tag are left out, as Verify leaves them
        out (``_tagged``): a row written without the key is no Identify candidate either.
        """
        subjects: list[str] = []
        chunks: list[bytes] = []
        if self.service_key is not None:
            self.timeline()  # read (and kept) before the cursor holds a connection
        with self._connection() as db, db.conn.transaction():
            db.execute("SET LOCAL statement_timeout = 0")  # longer than any one call
            with db.conn.cursor(name="kfaar_gallery", binary=True) as cur:
                cur.execute(
                    f"SELECT t.subject_id, t.vector, {GENERATION_COLUMNS} FROM templates t "
                    f"{GENERATION_JOIN} WHERE t.model = %s AND t.space = %s ORDER BY t.id",
                    (model, space),
                )
                while rows := cur.fetchmany(GALLERY_BATCH):
                    if self.service_key is not None:
                        kept = self._tagged([(s, model, space, v, *g) for s, v, *g in rows])
                        rows = [(s, v) for s, _, _, v in kept]
                    subjects.extend(r[0] for r in rows)
                    chunks.append(b"".join(bytes(r[1]) for r in rows))
        vectors = np.frombuffer(b"".join(chunks), np.float32).reshape(-1, EMBED_DIM)
        return Gallery(subjects, vectors)

    def _lock_budgets(self, db: Any, keys: list[str]) -> None:
        # Replicas settle the same budgets concurrently; without a lock two of them read one
        # level and both write it back, losing a charge. Locks are taken in key order, in
        # one statement (select-list items run left to right), and free at commit.
        ordered = sorted(set(keys))
        items = ", ".join(
            f"pg_advisory_xact_lock({BUDGET_LOCK_CLASS}, hashtext(?))" for _ in ordered
        )
        db.execute(f"SELECT {items}", tuple(ordered))

    def _lock_subject(self, db: Any, subject: str) -> None:
        # Two replicas enrolling one subject would both count its templates, then both
        # insert past the cap (or both claim it): the second waits for the first's commit.
        db.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (SUBJECT_LOCK_CLASS, subject))

    def _lock_audit(self, db: Any, writer: str) -> None:
        # Two calls of one replica append to its chain at once: without the lock both read
        # the same head and fork it.
        db.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (AUDIT_LOCK_CLASS, writer))

    def _announce(self, db: Any, seq: int) -> None:
        db.execute("SELECT pg_notify(?, ?)", (changelog.CHANNEL, str(seq)))

    def change_waiter(self) -> ChangeWaiter:
        return _Listener(self.url, self.pool_config.connect_timeout_s)

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()


class _Listener(ChangeWaiter):
    """LISTEN for announced changes on a connection of its own, reconnecting after outages."""

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        super().__init__()
        self.url, self.connect_timeout_s = url, connect_timeout_s
        self.conn: psycopg.Connection | None = None

    def wait(self, timeout_s: float) -> bool:
        if self.closed.is_set():
            return False
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=self.connect_timeout_s
                )
                self.conn.execute(f"LISTEN {changelog.CHANNEL}")
                return True  # (re)connected: whatever was announced meanwhile is in the log
            return any(True for _ in self.conn.notifies(timeout=timeout_s, stop_after=1))
        except psycopg.Error as exc:
            if self.closed.is_set():  # closed while waiting: the replica is stopping
                return False
            log.warning("change notifications unavailable (%s); polling the log", exc)
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self.closed.wait(timeout_s)
            return False

    def close(self) -> None:
        super().close()
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
