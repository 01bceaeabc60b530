"""The operator console's listings on a PostgreSQL deployment (--db-url), read-only."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import grpc
import pytest
from authz_kit import ADMIN, Site, code, unit
from starlette.testclient import TestClient

from auth_service.console.cli import build_console
from auth_service.console.data import AuditFilter
from auth_service.console.routes import build_app
from edge_agent.cli import build_parser, main

psycopg = pytest.importorskip("psycopg", reason="kfaar[postgres] is not installed")
SECRET = "hunter2-console"


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str):
    """A real service on PostgreSQL, with scoped doors, tokens, subjects and decisions."""
    site = Site(tmp_path / "unused.db", db_url=postgres_url)  # its key: tmp/pg-service.key
    north = site.client("door-n1", "north")
    north.enroll("alice", unit(1), unit(2))
    north.enroll("bob", unit(3))
    lobby = site.client("door-d1")  # the default scope
    lobby.enroll("carol", unit(4))
    assert north.verify("alice", unit(1)) and not north.verify("bob", unit(50))
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    yield site, tmp_path, postgres_url
    site.stop()
    site.running.store.close()


def console_of(tmp: Path, url: str, port: int, env: pytest.MonkeyPatch):
    """Build the console as ``kfaar console run`` does, its URL from $KFAAR_DB_URL."""
    env.setenv("KFAAR_DB_URL", url)
    args = build_parser().parse_args(
        ["console", "run", "--insecure", "--server", f"127.0.0.1:{port}",
         "--admin-token-file", str(tmp / "admin.token"), "--db", str(tmp / "absent.db"),
         "--service-key-file", str(tmp / "pg-service.key"),
         "--guess-budgets", "device=20/1,token=40/1,subject=12/1,pair=4/1"]
    )  # fmt: skip
    console = build_console(args)
    console.tls = False
    return console


def login(console) -> TestClient:
    c = TestClient(build_app(console), follow_redirects=False)
    assert c.post("/login", data={"token": ADMIN}).status_code == 303
    return c


def test_the_console_lists_what_the_service_wrote_to_postgresql(deployment, monkeypatch) -> None:
    site, tmp, url = deployment
    console = console_of(tmp, url, site.running.port, monkeypatch)
    try:
        c = login(console)
        devices = c.get("/devices").text
        key = site.keys["door-n1"].verify_key.encode().hex()[:16]
        assert "door-n1" in devices and "door-d1" in devices and key in devices
        assert "app-door-n1" in c.get("/tokens").text
        page = c.get("/subjects").text
        rows = re.findall(r'<td class="id">(\w+)</td><td>(\w+)</td><td>(\d+)</td>', page)
        assert sorted(rows) == [("alice", "north", "2"), ("bob", "north", "1"),
                                ("carol", "default", "1")]  # fmt: skip
        assert page.count(" ago") == 1  # alice matched once
        north = c.get("/subjects?scope=north").text
        assert "alice" in north and "bob" in north and "carol" not in north
        default = c.get("/subjects?scope=default").text
        assert "carol" in default and "alice" not in default
        assert "bob" not in c.get("/subjects?scope=north&q=al").text
        first = console.reader.subjects(None)[0]["key"]
        assert first not in [s["key"] for s in console.reader.subjects(None, after=first)]
        scoped = console.reader.audit(AuditFilter(), "north")  # LIKE … ESCAPE on PostgreSQL
        assert {r["subject"] for r in scoped} >= {"north/alice", "north/bob"}
        assert not [r for r in scoped if "carol" in r["subject"] or r["who"] == "door-d1"]
        refused = c.get("/decisions?outcome=refused").text
        assert "north/bob" in refused and "north/alice" not in refused
        models = c.get("/models").text.replace("\n", "")
        assert "<td>north</td><td>hpvfg/1.0.0</td><td>virtual</td><td>2</td><td>3</td>" in models
        assert console.chain.check_now().state == "verified"
        audit = c.get("/audit?method=Enroll").text
        assert "Hash chain: <b>verified</b>" in audit and audit.count(">Enroll<") == 3
        newest = console.reader.audit(AuditFilter(), None)[0]["id"]
        assert console.reader.counts() == {"devices": 2, "tokens": 2, "subjects": 3,
                                           "audit": newest}  # fmt: skip
    finally:
        console.reader.close()
        console.admin.close()


def test_an_action_shows_up_in_the_listings_and_lockouts_on_postgresql(
    deployment, monkeypatch
) -> None:
    site, tmp, url = deployment
    console = console_of(tmp, url, site.running.port, monkeypatch)
    try:
        c = login(console)
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/devices").text).group(1)
        form = {"csrf": csrf, "device_id": "cam-new", "verify_key": "ab" * 32, "scope": "south"}
        assert c.post("/devices/register", data=form).status_code == 303
        assert "cam-new" in c.get("/devices?scope=south").text
        cam = site.client("door-n2", "north")
        for i in range(4):  # the pair budget is 4
            assert not cam.verify("alice", unit(100 + i))
        assert code(lambda: cam.verify("alice", unit(1))) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "alice from device door-n2" in c.get("/lockouts").text
    finally:
        console.reader.close()
        console.admin.close()


def test_a_rewritten_row_is_found_on_postgresql(deployment, monkeypatch) -> None:
    site, tmp, url = deployment
    console = console_of(tmp, url, site.running.port, monkeypatch)
    try:
        assert console.chain.check_now().state == "verified"
        with psycopg.connect(url, autocommit=True) as db:  # a thief with the database
            db.execute("UPDATE audit SET outcome = '0 stored' WHERE method = 'Enroll'")
        status = console.chain.check_now()
        assert status.state == "broken" and "changed" in status.detail
        assert "Hash chain: <b>broken</b>" in login(console).get("/audit").text
    finally:
        console.reader.close()
        console.admin.close()


def test_the_listing_connection_cannot_write(deployment, monkeypatch) -> None:
    site, tmp, url = deployment
    console = console_of(tmp, url, site.running.port, monkeypatch)
    source = console.reader.source
    writes = [
        ["INSERT INTO audit (at, method, outcome) VALUES (?, ?, ?)"],
        ["UPDATE devices SET scope = 'south'"],
        ["DELETE FROM app_tokens"],
        ["SET default_transaction_read_only = off", "DELETE FROM templates"],
    ]
    try:
        for statements in writes:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), source.connect() as db:
                for sql in statements:
                    db.execute(sql, (1.0, "Forged", "x") if "?" in sql else ())
        counts = console.reader.counts()  # the pool's connections still read
        assert (counts["devices"], counts["tokens"], counts["subjects"]) == (2, 2, 3)
        assert [d["scope"] for d in console.reader.devices(None)] == ["default", "north"]
        assert not console.reader.audit(AuditFilter(method="Forged"), None)
    finally:
        console.reader.close()
        console.admin.close()


def test_a_bad_or_unreachable_database_is_a_clear_cli_error(
    tmp_path: Path, postgres_url: str, capsys, caplog, monkeypatch
) -> None:
    (tmp_path / "t").write_text(ADMIN)
    base = ["console", "run", "--insecure", "--admin-token-file", str(tmp_path / "t")]
    cases = [
        (f"mysql://kfaar:{SECRET}@db/kfaar", "expected postgresql://"),
        (f"postgresql://kfaar:{SECRET}@127.0.0.1:1/kfaar", "cannot read PostgreSQL"),
        (f"postgresql://kfaar:{SECRET}@[::1/kfaar", "not a valid PostgreSQL URL"),
        (postgres_url, "holds no kfaar store"),  # a database nobody migrated
    ]
    caplog.set_level(logging.DEBUG)
    for url, message in cases:
        assert main([*base, "--db-url", url]) == 2, url
        err = capsys.readouterr().err
        assert message in err and SECRET not in err, err
    monkeypatch.setenv("KFAAR_DB_URL", cases[1][0])  # the service's variable, read too
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "cannot read PostgreSQL" in err and "kfaar:***@127.0.0.1:1" in err
    assert SECRET not in caplog.text


def test_pages_say_when_postgresql_is_down_and_recover(tmp_path: Path, monkeypatch, caplog) -> None:
    """A server of its own, stopped and restarted under a running console."""
    from pg_kit import PostgresServer

    import auth_service.console.sql as sql

    monkeypatch.setattr(sql, "TIMEOUT_S", 1.0)  # a page waits this long for a connection
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    console = None
    try:  # trust auth ignores the password: it is there to be kept out of pages and logs
        url = server.url.replace("kfaar@", f"kfaar:{SECRET}@") + "/postgres"
        site = Site(tmp_path / "unused.db", db_url=url)
        site.client("door-1").enroll("dan", unit(7))
        (tmp_path / "admin.token").write_text(ADMIN)
        console = console_of(tmp_path, url, site.running.port, monkeypatch)
        c = login(console)
        assert "door-1" in c.get("/devices").text
        site.stop()
        site.running.store.close()
        server.stop()
        caplog.set_level(logging.INFO, logger="auth_service.console")
        page = c.get("/devices")
        assert page.status_code == 503 and "cannot be read" in page.text, page.text
        assert "kfaar:***@127.0.0.1" in page.text and SECRET not in page.text
        assert console.chain.check_now().state == "error"
        console_logs = [r.getMessage() for r in caplog.records if r.name.startswith("auth_")]
        assert console_logs and not any(SECRET in m for m in console_logs)
        server.start()
        deadline = time.monotonic() + 20  # the pool reconnects by itself, with backoff
        while (page := c.get("/devices")).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "door-1" in page.text
    finally:
        if console is not None:
            console.reader.close()
            console.admin.close()
        server.remove()


def test_subject_pages_follow_byte_order_in_a_locale_database(
    tmp_path: Path, postgres_server: str, monkeypatch
) -> None:
    """ICU's en-US order ignores the scope separator (char 31): pages must compare bytes."""
    name = "t_console_icu"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}"')
        try:
            db.execute(
                f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
        except psycopg.Error as exc:  # a server built without ICU
            pytest.skip(f"no ICU collation: {exc}")
    url = f"{postgres_server}/{name}"
    site = Site(tmp_path / "unused.db", db_url=url)
    console = None
    try:
        site.client("door-n", "north").enroll("alice", unit(1))
        site.client("door-x", "north-x").enroll("bob", unit(2))
        site.client("door-d").enroll("northzed", unit(3))
        (tmp_path / "admin.token").write_text(ADMIN)
        console = console_of(tmp_path, url, site.running.port, monkeypatch)
        ids = lambda scope, **kw: [s["id"] for s in console.reader.subjects(scope, **kw)]  # noqa: E731
        assert ids("north") == ["alice"]
        assert ids("north-x") == ["bob"]
        # Byte order: north\x1falice < north-x\x1fbob < northzed (char 31 < '-' < 'z').
        assert ids(None) == ["alice", "bob", "northzed"]
        assert ids(None, after="north\x1falice") == ["bob", "northzed"]
        assert ids("default", prefix="north") == ["northzed"]
    finally:
        if console is not None:
            console.reader.close()
            console.admin.close()
        site.stop()
        site.running.store.close()
