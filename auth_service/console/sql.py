"""Where the console's listings come from: the SQLite file or PostgreSQL, read-only.

The listing queries (data.py, chain.py) are written once, in SQLite's style (``?``
placeholders); a source gives them a read-only connection that speaks that style and
the few expressions whose spelling differs between the two databases.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)
POOL_MAX = 4  # connections the console's PostgreSQL pool holds at most
TIMEOUT_S = 5.0  # connecting, or waiting for a pooled connection
STATEMENT_TIMEOUT_MS = 30_000  # the chain check reads the whole audit log


class StoreUnreadable(Exception):
    """The store cannot be read right now (PostgreSQL down); the message has no password."""


class Source(Protocol):
    """A read-only store for the listings, and its SQL dialect."""

    where: str  # for messages: the file, or the URL with its password redacted
    binary: str  # appended to text comparisons and ORDER BY: compare bytes, not a locale
    schema_errors: tuple[type[BaseException], ...]  # a table or column the store lacks

    def connect(self) -> contextlib.AbstractContextManager[Any]: ...
    def instr(self, column: str) -> str: ...
    def distinct_list(self, column: str) -> str: ...
    def columns(self, db: Any, table: str) -> set[str]: ...
    def close(self) -> None: ...


class SqliteSource:
    """The SQLite store file, opened ``mode=ro`` afresh per call (thread-safe)."""

    binary = ""  # SQLite compares text as bytes already
    schema_errors = (sqlite3.OperationalError,)

    def __init__(self, db: Path) -> None:
        self.path = Path(db)
        if not self.path.is_file():
            raise FileNotFoundError(f"--db: no store at {db}")
        self.where = f"sqlite:{self.path}"

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            yield db
        finally:
            db.close()

    def instr(self, column: str) -> str:
        """Return SQL for the position of the scope separator (char 31) in ``column``."""
        return f"instr({column}, char(31))"

    def distinct_list(self, column: str) -> str:
        """Return SQL aggregating the distinct values of ``column``, comma-separated."""
        return f"GROUP_CONCAT(DISTINCT {column})"

    def columns(self, db: sqlite3.Connection, table: str) -> set[str]:
        return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        pass


class _PgConnection:
    """A psycopg connection with sqlite3's calling style: ``?`` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        # psycopg reads % as a placeholder marker: literal ones (LIKE 'x%') are doubled.
        return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))


class PostgresSource:
    """A PostgreSQL store through a small pool of read-only connections."""

    binary = ' COLLATE "C"'  # keyset pages need byte order, whatever the database's locale

    def __init__(self, url: str) -> None:
        from auth_service.db_cli import check_db_url, redact

        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ValueError(f"--db-url needs kfaar[postgres] ({exc.name} is missing)") from None
        self._secrets = check_db_url(url)  # a malformed URL: ValueError, password redacted
        self.where = redact(url, self._secrets)
        self._errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self.schema_errors = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)
        kwargs = {
            "connect_timeout": TIMEOUT_S,
            # Read-only twice: every transaction this session starts, and psycopg's own
            # BEGIN READ ONLY (conn.read_only), so no statement here can write.
            "options": "-c default_transaction_read_only=on "
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        }
        try:  # fail at start, with a clear message, rather than on the first page
            with psycopg.connect(url, **kwargs) as conn:
                conn.read_only = True
                conn.execute("SELECT 1 FROM audit, devices, templates LIMIT 0")
        except psycopg.errors.UndefinedTable as exc:
            raise ValueError(
                f"--db-url: {self.where} holds no kfaar store ({self._redact(exc)}); "
                "run kfaar db migrate or kfaar serve on it first"
            ) from None
        except psycopg.Error as exc:
            raise ValueError(
                f"--db-url: cannot read PostgreSQL at {self.where}: {self._redact(exc)}"
            ) from None
        self.pool = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=POOL_MAX,
            timeout=TIMEOUT_S,
            configure=_read_only,
            check=ConnectionPool.check_connection,  # a restarted server: a fresh connection
            name="kfaar-console",
            open=True,
        )
        log.info("console listings read from %s", self.where)

    def _redact(self, exc: BaseException) -> str:
        from auth_service.db_cli import redact

        return redact(str(exc).strip(), self._secrets)

    @contextlib.contextmanager
    def connect(self) -> Iterator[_PgConnection]:
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn:
                yield _PgConnection(conn)
        except (*self._errors, PoolTimeout) as exc:
            why = self._redact(exc)
            log.warning("console: PostgreSQL at %s unreadable: %s", self.where, why)
            raise StoreUnreadable(f"the store at {self.where} cannot be read: {why}") from None

    def instr(self, column: str) -> str:
        """Return SQL for the position of the scope separator (char 31) in ``column``."""
        return f"strpos({column}, chr(31))"

    def distinct_list(self, column: str) -> str:
        """Return SQL aggregating the distinct values of ``column``, comma-separated."""
        return f"string_agg(DISTINCT {column}, ',')"

    def columns(self, db: _PgConnection, table: str) -> set[str]:
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {r[0] for r in rows}

    def close(self) -> None:
        self.pool.close()


def _read_only(conn: Any) -> None:
    conn.read_only = True


def open_source(db: Path | None, db_url: str | None = None) -> Source:
    """Return the source a ``--db-url`` (PostgreSQL) or else a ``--db`` file names."""
    if db_url:
        return PostgresSource(db_url)
    if db is None:
        raise ValueError("give --db or --db-url")
    return SqliteSource(db)
