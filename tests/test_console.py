"""The operator console against a real loopback service: pages, actions and abuse tests."""

from __future__ import annotations

import argparse
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from authz_kit import ADMIN, BUDGETS, THRESHOLD, VIRTUAL, Client, code, unit
from starlette.testclient import TestClient

from auth_service.console.app import Console
from auth_service.console.auth import Sessions, add_operator, operator_hash
from auth_service.console.cli import build_console
from auth_service.console.routes import build_app
from auth_service.interceptor import token_hash
from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ADMIN_META = (("authorization", f"Bearer {ADMIN}"),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rig:
    """A service with metrics on loopback, and the console's state built as the CLI builds it."""

    running: object
    console: Console
    db: Path
    metrics_url: str
    tokens: dict[str, str]  # operator name -> token

    def admin_stub(self) -> auth_pb2_grpc.AdminServiceStub:
        return auth_pb2_grpc.AdminServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{self.running.port}")
        )

    def device(self, device_id: str, scope: str = "", token: str | None = None) -> Client:
        import nacl.signing

        key = nacl.signing.SigningKey.generate()
        self.admin_stub().RegisterDevice(
            auth_pb2.RegisterDeviceRequest(
                device_id=device_id, verify_key=key.verify_key.encode(), scope=scope
            ),
            metadata=ADMIN_META,
        )
        return Client(self.running.port, token or ADMIN, device_id, key)

    def stop(self) -> None:
        self.console.admin.close()
        self.running.stop(0)


def make_rig(tmp: Path, tls: bool = False, metrics: bool = True) -> Rig:
    db = tmp / "kfaar.db"
    port = free_port() if metrics else None
    cfg = ServerConfig(
        db=db,
        policy=Policy("hpvfg/1.0.0", {VIRTUAL: THRESHOLD}),
        port=0,
        admin_token=ADMIN,
        workers=4,
        guess=BUDGETS,
        metrics_port=port,
    )
    running = start(cfg)
    (tmp / "admin.token").write_text(ADMIN + "\n")
    ops = tmp / "operators.tsv"
    tokens = {
        "olga": add_operator(ops, "olga", "read", "*"),
        "wes": add_operator(ops, "wes", "write", "north"),
    }
    url = f"http://127.0.0.1:{port}/metrics"
    args = argparse.Namespace(
        server=f"127.0.0.1:{running.port}", ca=None, cert=None, key=None,
        admin_token_file=tmp / "admin.token", insecure=not tls, tls_cert=None, tls_key=None,
        host="127.0.0.1", db=db, operators=ops, metrics=[url] if metrics else [],
        guess_budgets="device=20/1,token=40/1,subject=12/1,pair=4/1", silent_after=3600.0,
        session_minutes=15.0,
    )  # fmt: skip
    if tls:  # the CLI wants files; the tests reach the app without a socket
        args.insecure, args.tls_cert, args.tls_key = True, None, None
    console = build_console(args)
    console.tls = tls
    return Rig(running, console, db, url, tokens)


@pytest.fixture
def rig(tmp_path: Path):
    r = make_rig(tmp_path)
    yield r
    r.stop()


def browser(rig: Rig, token: str = ADMIN) -> TestClient:
    """Return a client logged in with ``token``."""
    c = TestClient(build_app(rig.console), follow_redirects=False)
    r = c.post("/login", data={"token": token})
    assert r.status_code == 303, r.text
    return c


def csrf(c: TestClient, path: str = "/devices") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get(path).text).group(1)


def audit_rows(db: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT device_id, method, subject_id, outcome FROM audit").fetchall()


def test_pages_need_a_login_and_the_login_cookie_is_strict(rig: Rig) -> None:
    c = TestClient(build_app(rig.console), follow_redirects=False)
    for path in ("/", "/devices", "/tokens", "/subjects", "/decisions", "/audit", "/live"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    r = c.post("/login", data={"token": ADMIN})
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("kfaar_console=")
    for flag in ("HttpOnly", "SameSite=strict", "Max-Age=28800", "Path=/"):
        assert flag.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain HTTP on loopback: a Secure cookie is lost
    page = c.get("/")
    assert page.status_code == 200 and "admin · admin" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


def test_over_tls_the_cookie_is_secure_and_host_only(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, tls=True, metrics=False)
    try:
        c = TestClient(build_app(rig.console), base_url="https://testserver")
        r = c.post("/login", data={"token": ADMIN}, follow_redirects=False)
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-kfaar_console=") and "secure" in cookie.lower()
        assert "strict-transport-security" in c.get("/").headers
    finally:
        rig.stop()


def test_every_admin_action_works_and_is_audited_with_the_operator(rig: Rig) -> None:
    c = browser(rig)
    key = os.urandom(32).hex()
    form = {"csrf": csrf(c), "device_id": "cam-1", "verify_key": key, "scope": "north"}
    assert c.post("/devices/register", data=form).status_code == 303
    page = c.get("/devices").text
    assert "cam-1" in page and "registered cam-1 in scope north" in page
    form = {"csrf": csrf(c), "app_name": "door-app", "scope": "north", "devices": "cam-1",
            "method": ["Verify", "Identify"]}  # fmt: skip
    r = c.post("/tokens/create", data=form)
    token = re.search(r'id="new-token">([^<]+)<', r.text).group(1)
    grant = rig.running.store.token_grant(token_hash(token))
    assert grant == ("door-app", "north", ["cam-1"], ["Identify", "Verify"])
    assert "Identify, Verify" in c.get("/tokens").text
    c.post("/tokens/revoke", data={"csrf": csrf(c), "app_name": "door-app"})
    assert rig.running.store.token_grant(token_hash(token)) is None
    c.post("/devices/unregister", data={"csrf": csrf(c), "device_id": "cam-1"})
    assert rig.running.store.device("cam-1") is None
    rows = [r for r in audit_rows(rig.db) if r[0] == "operator:admin"]
    assert [r[1] for r in rows] == [
        "RegisterDevice", "CreateAppToken", "RevokeAppToken", "UnregisterDevice"
    ]  # fmt: skip
    audit = c.get("/audit?operator=admin").text
    assert audit.count("operator:admin") == 4 and "Hash chain" in audit
    assert "cam-1" in c.get("/devices").text.split("Unregistered")[1]  # listed as gone


def test_a_refused_action_shows_the_service_message(rig: Rig) -> None:
    c = browser(rig)
    form = {"csrf": csrf(c), "device_id": "cam-1", "verify_key": "abcd", "scope": ""}
    r = c.post("/devices/register", data=form, follow_redirects=True)
    assert "INVALID_ARGUMENT" in r.text and "32-byte" in r.text


def test_forged_requests_are_refused(rig: Rig) -> None:
    c = browser(rig)
    key = os.urandom(32).hex()
    good = {"device_id": "cam-x", "verify_key": key}
    attempts = [
        ({**good}, {}),  # no CSRF token
        ({**good, "csrf": "guess"}, {}),  # a wrong one
        ({**good, "csrf": csrf(c)}, {"origin": "https://evil.example"}),
        ({**good, "csrf": csrf(c)}, {"sec-fetch-site": "cross-site"}),
    ]
    for form, headers in attempts:
        r = c.post("/devices/register", data=form, headers=headers)
        assert r.status_code == 403, (form, headers)
    other = browser(rig)  # another session's token is no good here either
    r = c.post("/devices/register", data={**good, "csrf": csrf(other)})
    assert r.status_code == 403
    r = c.post("/devices/register", content=b'{"device_id": "cam-x"}',
               headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 415
    assert rig.running.store.device("cam-x") is None


def test_a_session_id_set_before_login_is_never_used(rig: Rig) -> None:
    app = build_app(rig.console)
    victim = TestClient(app, follow_redirects=False)
    victim.cookies.set("kfaar_console", "attacker-chosen")
    r = victim.post("/login", data={"token": ADMIN})
    issued = re.match(r"kfaar_console=([^;]+)", r.headers["set-cookie"]).group(1)
    assert issued != "attacker-chosen" and len(issued) >= 40
    attacker = TestClient(app, follow_redirects=False)
    attacker.cookies.set("kfaar_console", "attacker-chosen")
    assert attacker.get("/").status_code == 303
    # Logging in again gives a new id, and the old one stops working.
    again = victim.post("/login", data={"token": ADMIN}, cookies={"kfaar_console": issued})
    assert re.match(r"kfaar_console=([^;]+)", again.headers["set-cookie"]).group(1) != issued
    stale = TestClient(app, follow_redirects=False)
    stale.cookies.set("kfaar_console", issued)
    assert stale.get("/").status_code == 303


def test_logout_and_expiry_end_the_session(rig: Rig) -> None:
    c = browser(rig)
    sid = c.cookies.get("kfaar_console")
    c.post("/logout", data={"csrf": csrf(c)})
    replay = TestClient(build_app(rig.console), follow_redirects=False)
    replay.cookies.set("kfaar_console", sid)
    assert replay.get("/").status_code == 303
    rig.console.sessions = Sessions(idle_s=0.2)
    c = browser(rig)
    assert c.get("/").status_code == 200
    time.sleep(0.3)
    assert c.get("/").status_code == 303


def test_a_read_only_operator_cannot_write(rig: Rig) -> None:
    c = browser(rig, rig.tokens["olga"])
    page = c.get("/devices").text
    assert "olga · read" in page and "/devices/register" not in page and "Unregister" not in page
    key = os.urandom(32).hex()
    token = csrf(c)
    for path, form in [
        ("/devices/register", {"device_id": "cam-r", "verify_key": key}),
        ("/tokens/create", {"app_name": "sneaky"}),
        ("/tokens/revoke", {"app_name": "x"}),
        ("/devices/unregister", {"device_id": "x"}),
        ("/lockouts/clear", {"key": "device\x1fx"}),
    ]:
        r = c.post(path, data={**form, "csrf": token})
        assert r.status_code == 403 and "read-only" in r.text, path
    assert rig.running.store.device("cam-r") is None
    assert not [r for r in audit_rows(rig.db) if r[0] == "operator:olga"]


def test_a_scoped_operator_sees_and_acts_on_its_scope_only(rig: Rig) -> None:
    rig.device("south-cam", "south")
    rig.device("north-cam", "north")
    c = browser(rig, rig.tokens["wes"])
    page = c.get("/devices?scope=south").text  # the scope asked for is ignored: north only
    assert "north-cam" in page and "south-cam" not in page
    key = os.urandom(32).hex()
    for form in (
        {"device_id": "cam-n2", "verify_key": key, "scope": "south"},
        {"device_id": "south-cam", "verify_key": key, "scope": "north"},  # moving it in
    ):
        r = c.post("/devices/register", data={**form, "csrf": csrf(c)})
        assert r.status_code == 403 and "outside your scope" in r.text
    r = c.post("/devices/unregister", data={"device_id": "south-cam", "csrf": csrf(c)})
    assert r.status_code == 403 and rig.running.store.device("south-cam") is not None
    form = {"device_id": "cam-n2", "verify_key": key, "scope": "north", "csrf": csrf(c)}
    assert c.post("/devices/register", data=form).status_code == 303
    assert ("operator:wes", "RegisterDevice") in [r[:2] for r in audit_rows(rig.db)]


def test_login_is_rate_limited(rig: Rig) -> None:
    c = TestClient(build_app(rig.console), follow_redirects=False)
    for _ in range(5):
        assert c.post("/login", data={"token": "wrong"}).status_code == 401
    r = c.post("/login", data={"token": ADMIN})  # even the right token waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "set-cookie" not in r.headers


def test_markup_in_ids_is_shown_as_text(rig: Rig) -> None:
    cam = rig.device(XSS)
    cam.enroll(XSS, unit(1))
    cam.verify(XSS, unit(1))
    c = browser(rig)
    form = {"csrf": csrf(c), "app_name": XSS, "devices": "x"}
    created = c.post("/tokens/create", data=form)
    for page in ("/devices", "/subjects", "/decisions", "/audit", "/tokens", "/"):
        body = c.get(page).text
        assert "<script>alert" not in body and "<img src=x" not in body, page
        assert "&lt;script&gt;alert(" in body, page
    assert "<script>" not in created.text
    assert "<script" not in c.get("/decisions?door=%3Cscript%3E").text


def test_subjects_decisions_and_models(rig: Rig) -> None:
    cam = rig.device("door-1")
    for i in range(3):
        cam.enroll(f"s{i:02d}", unit(i), unit(i + 10))
    assert cam.verify("s01", unit(1)) and not cam.verify("s02", unit(99))
    c = browser(rig)
    page = c.get("/subjects").text
    rows = re.findall(r'<td class="id">(s\d\d)</td><td>default</td><td>(\d+)</td>', page)
    assert rows == [("s00", "2"), ("s01", "2"), ("s02", "2")]
    table = page.split('id="subjects"')[1]
    assert "hpvfg/1.0.0" in page and not re.search(r"\d\.\d{4}", table)  # no vector values
    assert page.count(" ago") == 1  # s01 matched
    page = c.get("/decisions?outcome=refused").text
    assert "s02" in page and "s01" not in page
    page = c.get("/decisions?door=nobody").text
    assert "no decisions match" in page
    assert c.get("/decisions?since=yesterday").status_code == 400
    future = c.get("/decisions?since=2999-01-01T00:00").text
    assert "no decisions match" in future
    assert "<td>default</td><td>hpvfg/1.0.0</td><td>virtual</td><td>3</td><td>6</td>" in (
        c.get("/models").text.replace("\n", "")
    )


def test_lockouts_are_listed_and_cleared(rig: Rig) -> None:
    cam = rig.device("door-9")
    cam.enroll("alice", unit(5))
    for i in range(4):  # the pair budget of the rig is 4
        assert not cam.verify("alice", unit(100 + i))
    assert code(lambda: cam.verify("alice", unit(5))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    c = browser(rig)
    page = c.get("/lockouts").text
    assert "subject alice from device door-9" in page
    key = re.search(r'name="key" value="(pair[^"]+)"', page).group(1)
    r = c.post("/lockouts/clear", data={"csrf": csrf(c), "key": key}, follow_redirects=True)
    assert "cleared the lock-out" in r.text and "alice from device" not in r.text.split("<table")[1]
    assert cam.verify("alice", unit(5))  # the owner is let in again
    assert ("operator:admin", "ClearGuessBudget") in [r[:2] for r in audit_rows(rig.db)]


def test_clear_guess_budget_rpc_is_admin_only_and_checks_its_key(rig: Rig) -> None:
    stub = rig.admin_stub()
    req = auth_pb2.ClearGuessBudgetRequest(budget_key="device\x1fnobody")
    assert code(lambda: stub.ClearGuessBudget(req)) == grpc.StatusCode.UNAUTHENTICATED
    assert code(lambda: stub.ClearGuessBudget(req, metadata=ADMIN_META)) == (
        grpc.StatusCode.NOT_FOUND
    )
    bad = auth_pb2.ClearGuessBudgetRequest(budget_key="proven\x1fa\x1fb")
    assert code(lambda: stub.ClearGuessBudget(bad, metadata=ADMIN_META)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_live_figures_come_from_the_metrics_endpoint(rig: Rig) -> None:
    cam = rig.device("door-2")
    cam.enroll("bob", unit(7))
    c = browser(rig)
    rig.console.scraper.scrape()
    before = rig.console.scraper.figures()[0]["decisions"]
    for _ in range(3):
        cam.verify("bob", unit(7))
    cam.verify("bob", unit(70))
    rig.console.scraper.scrape(now=time.time() + 10)
    f = rig.console.scraper.figures()[0]
    assert f["up"] and f["decisions"] == 4 and before == 0
    assert f["accept_rate"] == pytest.approx(0.75)
    assert f["decisions_per_min"] == pytest.approx(4 * 6, rel=0.01)
    assert f["p50"] is not None and 0 < f["p50"] < 2.5
    page = c.get("/live").text
    assert rig.metrics_url in page and '<span class="tag ok">up</span>' in page
    assert f'127.0.0.1:{rig.running.port}</td><td><span class="tag ok">serving' in page
    rig.running.health.enter_graceful_shutdown()  # a draining replica says NOT_SERVING
    assert '<span class="tag bad">NOT_SERVING</span>' in c.get("/live").text
    rig.console.scraper.replicas[0].url = "http://127.0.0.1:1/metrics"
    rig.console.scraper.scrape(now=time.time() + 20)
    assert "down" in c.get("/live").text


def test_operators_file_and_cli_errors(tmp_path: Path, capsys) -> None:
    from edge_agent.cli import main

    ops = tmp_path / "ops.tsv"
    assert main(["console", "add-operator", "ann", "--role", "write", "--operators", str(ops)]) == 0
    token = capsys.readouterr().out.strip()
    assert stat.S_IMODE(ops.stat().st_mode) == 0o600 and token not in ops.read_text()
    assert operator_hash(token).hex() in ops.read_text()
    assert main(["console", "add-operator", "ann", "--operators", str(ops)]) == 2
    assert main(["console", "add-operator", "b c", "--operators", str(ops)]) == 2
    (tmp_path / "t").write_text("x")
    base = ["console", "run", "--admin-token-file", str(tmp_path / "t"), "--db", str(ops)]
    assert main([*base, "--insecure", "--host", "0.0.0.0"]) == 2
    assert main([*base]) == 2  # neither TLS nor --insecure
    assert main(["console", "run", "--insecure", "--db", str(ops)]) == 2  # no admin token
    err = capsys.readouterr().err
    assert "loopback" in err and "--tls-cert" in err and "--admin-token-file" in err


def test_the_audit_page_shows_whether_the_chain_verifies(rig: Rig) -> None:
    import sqlite3

    pytest.importorskip("auth_service.audit_verify", reason="this tree keeps no audit chain")
    rig.device("door-c").enroll("carol", unit(3))
    c = browser(rig)
    assert rig.console.chain.check_now().state == "verified"
    assert "Hash chain: <b>verified</b>" in c.get("/audit").text
    with sqlite3.connect(rig.db) as con:  # a thief with the database rewrites one row
        con.execute("UPDATE audit SET outcome = '0 stored' WHERE method = 'Enroll'")
    status = rig.console.chain.check_now()
    assert status.state == "broken"
    assert "Hash chain: <b>broken</b>" in c.get("/audit").text


def test_a_shared_token_is_created_only_when_ticked(rig: Rig) -> None:
    if "shared" not in auth_pb2.CreateAppTokenRequest.DESCRIPTOR.fields_by_name:
        pytest.skip("this service has no shared tokens")
    c = browser(rig)
    c.post("/tokens/create", data={"csrf": csrf(c), "app_name": "kiosk", "shared": "yes"})
    c.post("/tokens/create", data={"csrf": csrf(c), "app_name": "gate"})
    page = c.get("/tokens").text
    assert "every device of the scope (shared)" in page
    assert "the first device that uses it" in page


def test_kfaar_console_run_serves_over_tls(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from auth_service.store_sqlite import SqliteStore

    repo = Path(__file__).resolve().parent.parent
    subprocess.run([repo / "deploy/tls/make-dev-certs.sh", tmp_path], check=True,
                   capture_output=True)  # fmt: skip
    SqliteStore(tmp_path / "kfaar.db").close()
    (tmp_path / "admin.token").write_text(ADMIN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "console", "run", "--port", "0",
         "--tls-cert", tmp_path / "server.crt", "--tls-key", tmp_path / "server.key",
         "--db", tmp_path / "kfaar.db", "--admin-token-file", tmp_path / "admin.token"],
        stdout=subprocess.PIPE, text=True, cwd=repo,
    )  # fmt: skip
    try:
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=str(tmp_path / "ca.crt"), base_url=url) as c:
            for _ in range(100):
                try:
                    page = c.get("/login")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert page.status_code == 200 and "strict-transport-security" in page.headers
            r = c.post("/login", data={"token": ADMIN})
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("__Host-kfaar_console=") and "secure" in cookie.lower()
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
            httpx.get(url.replace("https", "http") + "login", timeout=2).raise_for_status()
    finally:
        proc.terminate()
        proc.wait(10)
