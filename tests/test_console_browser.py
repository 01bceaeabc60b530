"""The console in a real headless Chromium, driven over WebDriver by Debian's chromedriver.

Skipped when Chromium or chromedriver is missing, except under CI (CI=true), where that
fails. Set KFAAR_CONSOLE_SCREENSHOTS=DIR to keep the page screenshots (docs/console/).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from authz_kit import ADMIN, unit
from test_console import XSS, Rig, free_port, make_rig

from auth_service.console.routes import build_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
]  # fmt: skip

if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
    why = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)


class WebDriver:
    """The few W3C WebDriver commands the tests use, over HTTP to chromedriver."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [DRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        try:
            self.sid = self._start(profile)
        except BaseException:
            self.proc.terminate()
            self.proc.wait(10)
            raise

    def _start(self, profile: Path) -> str:
        for _ in range(100):
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]}}  # fmt: skip
        value = self._cmd("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        return value["sessionId"]

    def _cmd(self, verb: str, path: str, body: dict | None = None):
        r = self.http.request(verb, path, json=body)
        value = r.json()["value"]
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {value.get('error')}: {value.get('message', '')[:200]}")
        return value

    def s(self, verb: str, path: str, body: dict | None = None):
        return self._cmd(verb, f"/session/{self.sid}{path}", body)

    def go(self, url: str) -> None:
        self.s("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def finds(self, css: str) -> list[str]:
        found = self.s("POST", "/elements", {"using": "css selector", "value": css})
        return [e[ELEMENT] for e in found]

    def type(self, css: str, text: str) -> None:
        el = self.find(css)
        self.s("POST", f"/element/{el}/clear", {})
        self.s("POST", f"/element/{el}/value", {"text": text})

    def click(self, css: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css: str = "body") -> str:
        for _ in range(50):  # a click's navigation may still be replacing the page
            try:
                return self.s("GET", f"/element/{self.find(css)}/text")
            except RuntimeError:
                time.sleep(0.1)
        return self.s("GET", f"/element/{self.find(css)}/text")

    def wait_for(self, needle: str, css: str = "body") -> str:
        """Return the text of ``css`` once it contains ``needle`` (10 s at most)."""
        for _ in range(100):
            text = self.text(css)
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} never appeared in {css}: {text[:300]!r}")

    def js(self, script: str):
        return self.s("POST", "/execute/sync", {"script": script, "args": []})

    def alert(self) -> str | None:
        try:
            return self.s("GET", "/alert/text")
        except RuntimeError:
            return None

    def click_in_row(self, table: str, needle: str) -> None:
        """Click the button of the table row whose text contains ``needle``."""
        for el in self.finds(f"{table} form button"):
            row = self.s("POST", f"/element/{el}/element", {"using": "xpath", "value": "../../.."})
            if needle in self.s("GET", f"/element/{row[ELEMENT]}/text"):
                self.s("POST", f"/element/{el}/click", {})
                return
        raise AssertionError(f"no row of {table} holds {needle!r}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.s("GET", "/screenshot")))

    def quit(self) -> None:
        try:
            self._cmd("DELETE", f"/session/{self.sid}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def served(tmp_path: Path):
    """The service, and the console on a real loopback HTTP port."""
    rig = make_rig(tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(rig.console), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield rig, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    rig.stop()


@pytest.fixture
def browser():
    with tempfile.TemporaryDirectory() as profile:
        wd = WebDriver(Path(profile))
        yield wd
        wd.quit()


def shots() -> Path | None:
    d = os.environ.get("KFAAR_CONSOLE_SCREENSHOTS")
    return Path(d) if d else None


def test_an_operator_session_in_chromium(served: tuple[Rig, str], browser: WebDriver) -> None:
    rig, url = served
    cam = rig.device("lobby-door")
    for i in range(12):
        cam.enroll(f"staff-{i:03d}", unit(i))
    for i in range(6):
        cam.verify(f"staff-{i:03d}", unit(i if i != 4 else 99))
    side = rig.device("side-door")
    side.enroll("dana", unit(60))
    for i in range(4):  # the rig's pair budget: 4 misses
        assert not side.verify("dana", unit(200 + i))
    xcam = rig.device(XSS)  # markup as a door and a subject id
    xcam.enroll(XSS, unit(50))
    assert xcam.verify(XSS, unit(50))
    wd, out = browser, shots()

    wd.go(url + "/devices")  # not logged in: the login page
    assert wd.text("h1") == "kfaar console"
    if out:
        wd.screenshot(out / "login.png")
    wd.type("#token", "wrong")
    wd.click("#login")
    wd.wait_for("unknown token")
    wd.type("#token", ADMIN)
    wd.click("#login")
    wd.wait_for("Overview", "h1")
    cookies = wd.s("GET", "/cookie")
    assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
    assert wd.js("return document.cookie") == ""  # HttpOnly: no script can read it

    wd.go(url + "/devices")
    wd.type("#register input[name=device_id]", "camera-7")
    wd.type("#register input[name=verify_key]", os.urandom(32).hex())
    wd.type("#register input[name=scope]", "north")
    wd.click("#register button")
    wd.wait_for("registered camera-7 in scope north")
    assert rig.running.store.device("camera-7") is not None

    wd.go(url + "/tokens")
    wd.type("#create-token input[name=app_name]", "front-desk")
    wd.type("#create-token input[name=scope]", "north")
    wd.type("#create-token input[name=devices]", "camera-7")
    wd.click("#create-token input[value=Verify]")
    wd.click("#create-token button")
    wd.wait_for("Copy it now")
    token = wd.text("#new-token")
    assert len(token) >= 40 and rig.running.store.token_grant is not None
    wd.go(url + "/tokens")
    assert "front-desk" in wd.text("#tokens") and "camera-7" in wd.text("#tokens")
    if out:
        wd.screenshot(out / "tokens.png")
    wd.click_in_row("#tokens", "front-desk")
    wd.wait_for("revoked the token of front-desk")
    assert "front-desk" not in wd.text("#tokens")

    wd.go(url + "/lockouts")  # the side door guessed dana four times: locked out
    if out:
        wd.screenshot(out / "lockouts.png")
    wd.click_in_row("#lockouts", "subject dana from device side-door")
    wd.wait_for("cleared the lock-out of subject dana from device side-door")
    assert side.verify("dana", unit(60))

    wd.go(url + "/devices")
    wd.click_in_row("#devices", "camera-7")
    wd.wait_for("unregistered camera-7")
    assert rig.running.store.device("camera-7") is None

    wd.go(url + "/audit")  # the audit rows appear, with who did it
    audit = wd.text("#audit")
    actions = ("RegisterDevice", "CreateAppToken", "RevokeAppToken", "ClearGuessBudget")
    for action in (*actions, "UnregisterDevice"):
        assert f"operator:admin {action}" in audit, action
    assert "no chain" in wd.text("#chain") or "verified" in wd.text("#chain")

    for page in ("/devices", "/subjects", "/decisions", "/audit"):  # the XSS stays text
        wd.go(url + page)
        assert wd.alert() is None, page
        assert XSS in wd.text(), page
        assert wd.js("return document.querySelectorAll('main script, main img').length") == 0
    if out:
        for page in ("", "devices", "subjects", "decisions", "audit", "live", "models"):
            wd.go(f"{url}/{page}")
            wd.screenshot(out / f"{page or 'overview'}.png")
