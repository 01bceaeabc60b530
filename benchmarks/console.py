"""How fast the console's pages answer at 10,000 subjects and 100,000 audit rows.

Builds a SQLite store of that size (4 scopes, 200 doors, 2 templates per subject, guess
budgets), then times every page through the ASGI app in process (no network), each page
``--repeat`` times, against the same pages over an empty store in the same run.

With ``--postgres`` the same rows go into a throwaway local PostgreSQL, read through the
console's read-only PostgreSQL source.

Run: python benchmarks/console.py [--subjects 10000] [--audit 100000] [--repeat 20] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # pg_kit

from auth_service.console.app import Console
from auth_service.console.auth import Directory, Sessions
from auth_service.console.backend import Admin
from auth_service.console.chain import Chain
from auth_service.console.data import Reader
from auth_service.console.live import Scraper
from auth_service.console.routes import build_app
from auth_service.console.sql import PostgresSource, Source
from auth_service.store_sqlite import SqliteStore

TOKEN = "bench-admin-token"
SCOPES = ("default", "north", "south", "east")
LIMIT_MS = 200.0


def seed_rows(subjects: int, audit: int, seed: int = 0) -> dict[str, tuple[str, list[tuple]]]:
    """Return table -> (columns, rows): 200 doors, 20 tokens, subjects, audit, budgets."""
    rng = np.random.default_rng(seed)
    now = time.time()
    doors = [f"cam-{i:04d}" for i in range(200)]
    out: dict[str, tuple[str, list[tuple]]] = {}
    out["devices"] = ("device_id, verify_key, created, scope",
                      [(d, os.urandom(32), now - 86400, SCOPES[i % 4])
                       for i, d in enumerate(doors)])  # fmt: skip
    out["app_tokens"] = ("app_name, token_hash, created, scope, devices, methods",
                         [(f"app-{i}", os.urandom(32), now, SCOPES[i % 4], doors[i],
                           "Verify,Identify") for i in range(20)])  # fmt: skip
    keys = []
    for i in range(subjects):
        scope = SCOPES[i % 4]
        sid = f"p{i:06d}"
        keys.append((sid if scope == "default" else f"{scope}\x1f{sid}", f"{scope}/{sid}"))
    vec = rng.standard_normal((2, 128)).astype(np.float32)
    out["templates"] = ("subject_id, model, space, vector, created",
                        [(k, "hpvfg/1.0.0", 3, v.tobytes(), now - 3600)
                         for k, _ in keys for v in vec])  # fmt: skip
    rows = []
    for n in range(audit):
        k = int(rng.integers(subjects))
        door = doors[int(rng.integers(len(doors)))]
        r = rng.random()
        if r < 0.01:
            rows.append((now - audit + n, "operator:admin", "RegisterDevice", None, f"{door}"))
        elif r < 0.05:
            rows.append((now - audit + n, door, "Verify", None, "refused: RESOURCE_EXHAUSTED"))
        else:
            out_ = "accept" if r < 0.85 else "reject"
            rows.append((now - audit + n, door, "Verify", keys[k][1], out_))
    out["audit"] = ("at, device_id, method, subject_id, outcome", rows)
    out["guess_budgets"] = ("budget_key, level, at",
                            [(f"pair\x1f{keys[i][0]}\x1f{doors[i % 200]}", 3.0 + i % 5, now)
                             for i in range(min(5000, subjects))])  # fmt: skip
    return out


def _insert(columns: str, table: str, mark: str) -> str:
    marks = ", ".join([mark] * len(columns.split(",")))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})"


def fill(db: Path, subjects: int, audit: int) -> Path:
    """Write the seeded rows straight into a fresh SQLite store; return its path."""
    store = SqliteStore(db)
    con = store.db
    con.execute("BEGIN")
    for table, (columns, rows) in seed_rows(subjects, audit).items():
        con.executemany(_insert(columns, table, "?"), rows)
    con.execute("COMMIT")
    store.close()
    return db


def fill_postgres(url: str, subjects: int, audit: int) -> str:
    """Migrate a fresh PostgreSQL database and write the same rows; return its URL."""
    import psycopg

    from auth_service.store_postgres import PostgresStore

    PostgresStore(url).close()  # the schema, as kfaar serve would migrate it
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, (columns, rows) in seed_rows(subjects, audit).items():
            cur.executemany(_insert(columns, table, "%s"), rows)
        cur.execute("ANALYZE")
    return url


def client(db: Path | Source):
    from starlette.testclient import TestClient

    args = argparse.Namespace(server="127.0.0.1:1", ca=None, cert=None, key=None)
    console = Console(
        directory=Directory(TOKEN, None),
        reader=Reader(db),
        admin=Admin(args, TOKEN),  # never called: pages only read
        scraper=Scraper([]),
        chain=Chain(db),
        sessions=Sessions(),
    )
    t0 = time.perf_counter()
    state = console.chain.check_now().state  # then it reruns every minute in a thread
    sys.stderr.write(f"audit chain: {state} in {time.perf_counter() - t0:.2f} s\n")
    c = TestClient(build_app(console), follow_redirects=False)
    assert c.post("/login", data={"token": TOKEN}).status_code == 303
    return c


PAGES = [
    "/",
    "/devices",
    "/tokens",
    "/subjects",
    "/subjects?after=north%1Fp005001",
    "/subjects?scope=north",
    "/subjects?q=p0099",
    "/decisions",
    "/decisions?door=cam-0017",
    "/decisions?subject=north/p000001",
    "/decisions?outcome=refused",
    "/decisions?since=2026-01-01T00:00&before=50000",
    "/audit",
    "/audit?operator=admin",
    "/audit?method=RegisterDevice&before=90000",
    "/lockouts",
    "/models",
]


def time_pages(db: Path | Source, repeat: int) -> dict[str, list[float]]:
    c = client(db)
    out = {}
    for page in PAGES:
        c.get(page)  # warm: templates compiled, pages cached by the OS
        ms = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = c.get(page)
            ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{page}: HTTP {r.status_code}")
        out[page] = ms
    return out


def build(args: argparse.Namespace, tmp: str) -> tuple[Path | Source, Path | Source, object]:
    """Return the full and the empty store (SQLite files, or PostgreSQL sources)."""
    if not args.postgres:
        big = fill(Path(tmp) / "big.db", args.subjects, args.audit)
        return big, fill(Path(tmp) / "empty.db", 0, 0), None
    import psycopg
    from pg_kit import PostgresServer  # tests/pg_kit.py: a throwaway local server

    pg = PostgresServer()
    pg.start()
    with psycopg.connect(f"{pg.url}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE big")
        conn.execute("CREATE DATABASE empty")
    big = fill_postgres(f"{pg.url}/big", args.subjects, args.audit)
    empty = fill_postgres(f"{pg.url}/empty", 0, 0)
    return PostgresSource(big), PostgresSource(empty), pg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=10_000)
    p.add_argument("--audit", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--postgres", action="store_true",
                   help="the same stores on a local PostgreSQL (its binaries on PATH or in "
                   "/usr/lib/postgresql), read as kfaar console --db-url reads them")  # fmt: skip
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        big, empty, server = build(args, tmp)
        sys.stderr.write(f"stores built in {time.perf_counter() - t0:.1f} s\n")
        try:
            full, base = time_pages(big, args.repeat), time_pages(empty, args.repeat)
        finally:
            for src in (big, empty):
                if isinstance(src, PostgresSource):
                    src.close()
            if server is not None:
                server.remove()
    store = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{store}: {args.subjects:,} subjects, {args.audit:,} audit rows, "
          f"{args.repeat} requests a page")  # fmt: skip
    print("| page | median ms | p95 ms | empty store median ms | under 200 ms |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for page in PAGES:
        ms = sorted(full[page])
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        worst = max(worst, p95)
        ok = "yes" if p95 < LIMIT_MS else "NO"
        med, bmed = statistics.median(ms), statistics.median(base[page])
        print(f"| `{page}` | {med:.1f} | {p95:.1f} | {bmed:.1f} | {ok} |")
    print(f"worst p95: {worst:.1f} ms")
    return 0 if worst < LIMIT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
